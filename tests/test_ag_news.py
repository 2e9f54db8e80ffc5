"""Tests of AG News: CSV reader, tokenizer, stratified split, loader and the Transformer."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from three_regimes_jax.engine.data import DataError, load_dataset
from three_regimes_jax.engine.data import ag_news as agn
from three_regimes_jax.engine.models.transformer import Transformer
from three_regimes_jax.engine.sphere import split_si

AG_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ag_news_csv"

# Original format: every field quoted, inner quotes doubled, line breaks escaped.
ROWS = [
    '"3","Fears for pension","Unions say they are ""disappointed"", after talks."',
    '"4","Space race","A second\\team of rocketeers\\nation #39;s first\\\\""launch"""',
    '"1","World news","Leaders meet, talk peace."',
    '"2","Sports news","Team wins the cup."',
]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THREE_REGIMES_DATA_DIR", raising=False)


def write_csv(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def synthetic_rows(per_class: int) -> list[str]:
    """Rows with a class word 'topic<c>' and a word 'w<c>n<i>' unique to the row."""
    return [
        f'"{c + 1}","title w{c}n{i}","topic{c} words, item{i % 3}"'
        for i in range(per_class)
        for c in range(4)
    ]


# ---------------------------------------------------------------------------- reader


def test_read_csv_original_format(tmp_path: Path) -> None:
    labels, texts = agn.read_ag_news_csv(write_csv(tmp_path / "test.csv", ROWS))
    assert labels.dtype == np.int32 and labels.tolist() == [2, 3, 0, 1]
    assert texts[0] == 'Fears for pension Unions say they are "disappointed", after talks.'
    # backslash line breaks -> spaces, bare entity decoded, no word cut in two
    assert texts[1] == 'Space race A second team of rocketeers nation \'s first "launch"'
    assert agn.tokenize(texts[0])[:3] == ["fears", "for", "pension"]
    assert agn.tokenize('Say "Hi", 2x!') == ["say", '"', "hi", '"', ",", "2x", "!"]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (['"5","t","d"'], r"bad class index '5' in AG News file .*test\.csv, row 1"),
        (['"1","t","d"', '"x","t","d"'], r"bad class index 'x'.*row 2"),
        (['"1","t"'], r"malformed AG News file .*row 1: expected 3 fields"),
        ([], r"is empty"),
    ],
)
def test_read_csv_errors(tmp_path: Path, rows: list[str], match: str) -> None:
    path = tmp_path / "test.csv"
    path.write_text("\n".join(rows), encoding="utf-8")
    with pytest.raises(DataError, match=match) as e:
        agn.read_ag_news_csv(path)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------- tokenizer


def test_vocab_and_encode() -> None:
    vocab = agn.build_vocab(["b a a", "c b a", "d"], vocab_size=4)
    # <pad>, <unk>, then by frequency (a: 3, b: 2), ties (c, d: 1) alphabetical, cut at 4
    assert vocab == {"<pad>": 0, "<unk>": 1, "a": 2, "b": 3}
    assert agn.build_vocab(["d c"], 10) == {"<pad>": 0, "<unk>": 1, "c": 2, "d": 3}
    ids = agn.encode(["a b c a b", "b", ""], vocab, max_len=3)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [[2, 3, 1], [3, 0, 0], [0, 0, 0]])
    with pytest.raises(DataError, match="--vocab-size"):
        agn.build_vocab(["a"], 1)
    with pytest.raises(DataError, match="--max-len"):
        agn.encode(["a"], vocab, 0)


def test_split_is_stratified_and_deterministic() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    np.random.default_rng(0).shuffle(labels)
    tr, ev = agn.split_test(labels, 0.8)
    assert np.bincount(labels[tr]).tolist() == [8, 16, 24, 32]
    assert np.bincount(labels[ev]).tolist() == [2, 4, 6, 8]
    assert not set(tr) & set(ev) and sorted([*tr, *ev]) == list(range(100))
    tr2, ev2 = agn.split_test(labels, 0.8)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(ev, ev2)
    assert not np.array_equal(tr, agn.split_test(labels, 0.8, seed=1)[0])


# ---------------------------------------------------------------------------- loader


def test_load_split_vocab_from_train_only(tmp_path: Path) -> None:
    rows = synthetic_rows(5)
    write_csv(tmp_path / "ag_news_csv" / "test.csv", rows)
    ds = agn.load_ag_news(tmp_path, split_test=0.6, max_len=8, source="files")
    assert ds.x_train.shape == (12, 8) and ds.x_test.shape == (8, 8)
    assert ds.x_train.dtype == np.int32 and ds.num_classes == 4
    assert np.bincount(ds.y_train).tolist() == [3] * 4
    labels, texts = agn.read_ag_news_csv(tmp_path / "ag_news_csv" / "test.csv")
    tr, ev = agn.split_test(labels, 0.6)
    vocab = agn.build_vocab([texts[i] for i in tr], 20000)
    np.testing.assert_array_equal(ds.x_test, agn.encode([texts[i] for i in ev], vocab, 8))
    only_test = {w for i in ev for w in agn.tokenize(texts[i])} - set(vocab)
    assert only_test  # some held-out words are unknown ...
    assert (ds.x_test == agn.UNK_ID).any()  # ... and map to <unk>
    # use_data_size keeps the first N training rows; label noise is applied
    small = agn.load_ag_news(tmp_path, split_test=0.6, use_data_size=5, label_noise=1.0)
    assert small.x_train.shape == (5, 64) and small.x_test.shape == (8, 64)


def test_train_csv_used_unless_split(tmp_path: Path) -> None:
    write_csv(tmp_path / "train.csv", synthetic_rows(3))
    write_csv(tmp_path / "test.csv", synthetic_rows(2))
    ds = load_dataset("ag_news", tmp_path, vocab_size=6, max_len=5)
    assert ds.x_train.shape == (12, 5) and ds.x_test.shape == (8, 5)
    assert ds.x_train.max() < 6 and ds.x_test.max() < 6
    split = load_dataset("ag_news", tmp_path, split_test=0.5)
    assert split.num_train == 4 and split.num_test == 4  # train.csv ignored
    assert np.bincount(split.y_train).tolist() == [1] * 4


def test_load_errors(tmp_path: Path) -> None:
    write_csv(tmp_path / "ag_news_csv" / "test.csv", ROWS)
    for kwargs, match in [
        ({}, r"ag_news_csv holds the test split only.*--split-test 0\.8"),
        ({"split_test": 1.5}, r"--split-test must be a fraction in \(0, 1\)"),
        ({"split_test": 0.8, "vocab_size": 1}, "--vocab-size"),
        ({"split_test": 0.8, "max_len": 0}, "--max-len"),
        ({"split_test": 0.8, "pad_to": 32}, "image datasets only"),
    ]:
        with pytest.raises(DataError, match=match) as e:
            load_dataset("ag_news", tmp_path, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="--split-test applies to --dataset ag_news only"):
        load_dataset("digits", split_test=0.8)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=r"not found; tried test\.csv in .*none"):
        load_dataset("ag_news", tmp_path / "none", source="files", split_test=0.8)


def test_tfds_mock(tmp_path: Path) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        ds = load_dataset("ag_news", tmp_path, max_len=12)  # no CSV there: TFDS
        split = load_dataset("ag_news", source="tfds", split_test=0.5)
    assert ds.x_train.shape == (8, 12) and ds.x_test.shape == (8, 12)
    assert ds.x_train.dtype == np.int32 and ds.y_train.max() < 4
    assert split.num_train + split.num_test == 8


def test_not_found_lists_what_was_tried(tmp_path: Path, monkeypatch) -> None:
    def no_tfds(*args, **kwargs):
        raise DataError("TFDS 'ag_news_subset' (data_dir=x) unavailable: not prepared")

    monkeypatch.setattr(agn, "read_tfds_splits", no_tfds)
    with pytest.raises(DataError) as e:
        load_dataset("ag_news", tmp_path, split_test=0.8)
    msg = str(e.value)
    assert "\n" not in msg and f"test.csv in {tmp_path}, {tmp_path / 'ag_news_csv'}" in msg
    assert "TFDS 'ag_news_subset'" in msg and "--data-dir" in msg


@pytest.mark.skipif(not (AG_DIR / "test.csv").is_file(), reason=f"{AG_DIR} absent")
def test_real_test_csv() -> None:
    labels, texts = agn.read_ag_news_csv(AG_DIR / "test.csv")
    assert len(texts) == 7600 and np.bincount(labels).tolist() == [1900] * 4
    assert not any("\\" in t for t in texts)
    ds = load_dataset("ag_news", AG_DIR.parent, split_test=0.8, max_len=32)
    assert ds.x_train.shape == (6080, 32) and ds.x_test.shape == (1520, 32)
    assert np.bincount(ds.y_test).tolist() == [380] * 4
    assert ds.x_train.max() < 20000 and (ds.x_train[:, 0] > 1).all()


# ------------------------------------------------------------------------ Transformer


TOKENS = jnp.array([[5, 7, 9, 2, 0, 0], [3, 3, 8, 11, 12, 4], [6, 0, 0, 0, 0, 0]], jnp.int32)
PADDED = jnp.pad(TOKENS, ((0, 0), (0, 3)))  # 3 more pad tokens per row
LABELS = jnp.array([0, 1, 3])
# XLA:CPU compiles this model slowly (~1 s a program); the tests check values, not speed.
jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def _key(seed: int) -> jax.Array:
    # rbg keys: threefry-based inits compile several times slower on CPU.
    return jax.random.key(seed, impl="rbg")


def _init(model: Transformer) -> tuple[dict, dict]:
    boxed = jit(lambda k: model.init({"params": k}, jnp.zeros((2, 8)), train=False))(_key(0))
    return split_si(boxed["params"])


def _scale(params: dict, name: str, c: float) -> dict:
    """``params`` with the kernel of ``layer_0/<name>`` multiplied by ``c``."""
    layer = params["layer_0"]
    return {**params, "layer_0": {**layer, name: {"kernel": layer[name]["kernel"] * c}}}


def _forward(model: Transformer):
    """Jitted ``params -> (logits of TOKENS, logits of PADDED)``, no dropout rng."""
    return jit(lambda p: [model.apply({"params": p}, x, train=True) for x in (TOKENS, PADDED)])


def _check_forward(model: Transformer, params: dict, si_mask: dict) -> np.ndarray:
    si_names = {
        "/".join(str(k.key) for k in path)
        for path, m in jax.tree_util.tree_flatten_with_path(si_mask)[0]
        if m
    }
    assert si_names == {"layer_0/ff_in/kernel", "layer_0/ff_out/kernel"}
    forward = _forward(model)
    logits, padded = forward(params)
    assert logits.shape == (3, 4) and bool(jnp.isfinite(logits).all())
    np.testing.assert_allclose(padded, logits, atol=1e-5)  # appended pads change nothing
    for name, c in (("ff_in", 3.7), ("ff_out", 2.0)):  # each declared kernel is SI
        np.testing.assert_allclose(forward(_scale(params, name, c))[0], logits, atol=1e-4)
    not_si = {**params, "embedding": params["embedding"] * 1.5}
    assert not np.allclose(forward(not_si)[0], logits, atol=1e-3)
    return np.asarray(logits)


def test_transformer_learned_first() -> None:
    model = Transformer(16, 4, 10, positional="learned", pooling="first")
    params, si_mask = _init(model)
    assert params["pos_embedding"].shape == (10, 32)
    _check_forward(model, params, si_mask)


def test_transformer_grad_and_dropout() -> None:
    model = Transformer(16, 4, 10, dropout=0.3)
    params, si_mask = _init(model)
    assert "pos_embedding" not in params
    logits = _check_forward(model, params, si_mask)
    # without a dropout rng the model equals its dropout-free twin; with one it drops
    plain = _forward(Transformer(16, 4, 10))(params)[0]
    np.testing.assert_allclose(plain, logits, atol=1e-6)
    drop = jit(lambda p, k: model.apply({"params": p}, TOKENS, train=True, rngs={"dropout": k}))
    assert not np.allclose(drop(params, _key(1)), logits, atol=1e-3)

    def loss(p):
        out = model.apply({"params": p}, TOKENS, train=True)
        return -jnp.mean(jax.nn.log_softmax(out)[jnp.arange(3), LABELS])

    value_and_grad = jit(jax.value_and_grad(loss))
    value, grads = value_and_grad(params)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["embedding"]).sum()) > 0
    stepped = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert float(value_and_grad(stepped)[0]) < float(value)


def test_transformer_options() -> None:
    biased = Transformer(16, 4, 6, ff_bias=True)
    boxed = jax.eval_shape(lambda: biased.init({"params": _key(0)}, TOKENS, train=False))
    assert not any(jax.tree.leaves(split_si(boxed["params"])[1]))
    assert "bias" in boxed["params"]["layer_0"]["ff_in"]
    assert Transformer.uses_conv is False
    for model, match in [
        (Transformer(16, 4, 5), "6 tokens but max_len is 5"),
        (Transformer(16, 4, 6, pooling="max"), "unknown pooling"),
        (Transformer(16, 4, 6, positional="rope"), "unknown positional"),
        (Transformer(16, 4, 6, num_heads=3), "not divisible"),
    ]:
        with pytest.raises(ValueError, match=match):
            jax.eval_shape(lambda m=model: m.init({"params": _key(0)}, TOKENS, train=False))


def test_transformer_sweep_end_to_end_on_a_small_csv(tmp_path: Path) -> None:
    """CLI-equivalent run: AG News CSV -> tokens -> Transformer -> whole-space SGD -> results."""
    from three_regimes_jax.config import Config
    from three_regimes_jax.storage.results import load_results
    from three_regimes_jax.studies.sweep import run_sweep

    write_csv(tmp_path / "ag" / "test.csv", synthetic_rows(8))
    cfg = Config.from_flat(
        model="transformer",
        d_model=8,
        d_ff=16,
        dataset="ag_news",
        data_dir=str(tmp_path / "ag"),
        split_test=0.5,
        vocab_size=64,
        max_len=8,
        train_mode="whole",
        lrs=(0.1, 100.0),
        weight_decays=(1e-3,),
        momentum=0.9,
        epochs=2,
        batch_size=8,
    )
    run_sweep(cfg, out=tmp_path / "run", progress=False)
    m = load_results(tmp_path / "run").metrics
    assert m["train_loss"].shape == (2, 3) and np.isfinite(m["train_loss"][0]).all()
    assert m["group_names"].tolist() == ["layer_0/ff_in/kernel", "layer_0/ff_out/kernel"]
    assert m["test_acc"][0, -1] >= 0.0 and m["lr"].tolist() == [0.1, 100.0]
