"""Checkpoints: schedules, bit-exact save/restore of whole grids, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from three_regimes_jax.config import Config
from three_regimes_jax.engine.grid import GridState
from three_regimes_jax.engine.models import build_model, init_model
from three_regimes_jax.engine.sphere import SphereState
from three_regimes_jax.engine.trainer import GridTrainer
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.checkpoint import (
    META_KEYS,
    GridCheckpointer,
    available_epochs,
    config_difference,
    latest_epoch,
    load_checkpoint,
    read_meta,
)
from three_regimes_jax.storage.schedule import checkpoint_epochs, log_schedule

ELRS = [1e-3, 1e-2, 1e-1]
SEEDS = [0, 1, 2]
SHAPE = (8, 8, 1)
CONFIG = Config.from_flat(model="mlp_si", hidden=(8, 4), elrs=tuple(ELRS), batch_size=64)
CFG = CONFIG.to_dict()
V1_SWEEP = Path(__file__).parent / "data" / "v1_sweep"

# --------------------------------------------------------------------------- schedules


def test_log_schedule_250_is_the_papers():
    expected = [*range(20), *range(20, 100, 5), *range(100, 200, 10), 200, 250]
    assert log_schedule(250) == expected


def test_log_schedule_continues_by_decades_and_keeps_ends():
    s = log_schedule(20000)
    assert [e for e in s if 1000 <= e < 2000] == list(range(1000, 2000, 100))
    assert [e for e in s if 2000 <= e < 10000] == list(range(2000, 10000, 500))
    assert [e for e in s if 10000 <= e] == [*range(10000, 20000, 1000), 20000]
    assert log_schedule(0) == [0]
    assert log_schedule(3) == [0, 1, 2, 3]
    assert log_schedule(23) == [*range(21), 23]
    with pytest.raises(UserError):
        log_schedule(-1)


def test_checkpoint_epochs_combines_and_always_has_ends():
    assert checkpoint_epochs(10) == []  # checkpointing off
    assert checkpoint_epochs(10, every=3) == [0, 3, 6, 9, 10]
    assert checkpoint_epochs(10, epochs=[7, 3, 3]) == [0, 3, 7, 10]
    assert checkpoint_epochs(100, epochs=[33], every=50) == [0, 33, 50, 100]
    both = checkpoint_epochs(250, epochs=[33], every=100, log=True)
    assert both == sorted({*log_schedule(250), 33})
    assert checkpoint_epochs(0, every=5) == [0]


def test_checkpoint_epochs_rejects_bad_values():
    with pytest.raises(UserError, match="epoch 12 is after the last epoch 10"):
        checkpoint_epochs(10, epochs=[3, 12])
    with pytest.raises(UserError, match=">= 0"):
        checkpoint_epochs(10, epochs=[-1])
    with pytest.raises(UserError, match="interval"):
        checkpoint_epochs(10, every=-2)
    with pytest.raises(
        UserError, match="epoch 3 is before the first epoch 5; give epochs between 5"
    ):
        checkpoint_epochs(10, epochs=[3], start=5)
    with pytest.raises(UserError, match="first epoch 11 is after the last epoch 10"):
        checkpoint_epochs(10, start=11)


def test_checkpoint_epochs_from_a_start_epoch():
    assert checkpoint_epochs(10, start=4) == []
    assert checkpoint_epochs(10, start=4, always=True) == [4, 10]
    assert checkpoint_epochs(0, always=True) == [0]
    assert checkpoint_epochs(10, every=4, start=3) == [3, 7, 10]
    assert checkpoint_epochs(11, every=4, start=3) == [3, 7, 11]
    assert checkpoint_epochs(30, epochs=[12], start=10) == [10, 12, 30]
    assert checkpoint_epochs(250, log=True, start=90) == [90, 95, *range(100, 200, 10), 200, 250]
    # A fine-tune from E for n epochs, saving every N: {E, E+n} and range(E, E+n, N).
    for e, n, every in [(0, 10, 3), (5, 7, 2), (20, 5, 10), (3, 4, 1)]:
        expected = sorted({e, e + n} | set(range(e, e + n, every)))
        assert checkpoint_epochs(e + n, every=every, start=e, always=True) == expected


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def trainer():
    model = build_model("mlp_si", 10, hidden=(8, 4))
    mask = init_model(model, jax.random.key(0), SHAPE).si_mask
    return GridTrainer(model, mask, batch_size=64, strategy="map")


@pytest.fixture(scope="module")
def trained(trainer, tiny):
    """G=3 grid after one epoch (batch_stats, step, params all moved).

    Placed on the device explicitly (committed, as restored arrays are), so the
    restored state reuses the compiled epoch instead of compiling another.
    """
    x, y, *_ = tiny
    state0 = jax.device_put(trainer.init(ELRS, SEEDS, SHAPE), jax.devices()[0])
    state1, _ = trainer.train_epoch(state0, x, y, 0)
    return state0, state1


@pytest.fixture(scope="module")
def run_dir(trained, tmp_path_factory) -> Path:
    """A results dir with checkpoints at epochs 0, 1, 2, 5 (5 = 2 = 1: the same state)."""
    state0, state1 = trained
    out = tmp_path_factory.mktemp("run")
    with GridCheckpointer(out, config=CFG, num_classes=10, input_shape=SHAPE, seeds=SEEDS) as ck:
        ck.save(0, state0)
        for e in (1, 2, 5):
            ck.save(e, state1, {"note": f"epoch {e}"})
    return out


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run_dir, dst)
    return dst


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------- round trip


def test_listing(run_dir):
    assert available_epochs(run_dir) == [0, 1, 2, 5]
    assert available_epochs(run_dir / "checkpoints") == [0, 1, 2, 5]
    assert latest_epoch(run_dir) == 5
    assert available_epochs(run_dir / "nowhere") == []
    assert latest_epoch(run_dir / "nowhere") is None


@pytest.mark.parametrize("abstract", [False, True])
def test_restore_is_bit_exact(run_dir, trained, abstract):
    state0, state1 = trained
    template = jax.eval_shape(lambda: state0) if abstract else state0
    restored, meta = load_checkpoint(run_dir, 1, template=template)
    assert isinstance(restored, GridState) and isinstance(restored.opt_state, SphereState)
    _assert_bitwise_equal(restored, state1)
    assert restored.data_key.dtype == np.uint32 and restored.step.dtype == np.int32
    np.testing.assert_array_equal(restored.opt_state.elr, np.float32(ELRS))
    first, _ = load_checkpoint(run_dir / "checkpoints", 0, template=template)
    _assert_bitwise_equal(first, state0)


def test_meta(run_dir, trained):
    restored, meta = load_checkpoint(run_dir, template=trained[0])  # latest
    assert meta["epoch"] == 5 and read_meta(run_dir, 5) == meta
    assert set(META_KEYS) <= set(meta)
    assert meta["config"] == CFG
    assert meta["elr"] == ELRS and meta["seed"] == SEEDS and meta["members"] == 3
    assert meta["step"] == [4, 4, 4]  # 200 examples, batch 64: 4 steps
    assert meta["num_classes"] == 10 and meta["input_shape"] == list(SHAPE)
    assert meta["note"] == "epoch 5"


def test_restored_state_trains_identically(run_dir, trained, trainer, tiny):
    x, y, *_ = tiny
    _, state1 = trained
    restored, _ = load_checkpoint(run_dir, 1, template=state1)
    a, ma = trainer.train_epoch(state1, x, y, 1)
    b, mb = trainer.train_epoch(restored, x, y, 1)
    _assert_bitwise_equal(b, a)
    _assert_bitwise_equal(mb, ma)


def test_save_and_load_print_nothing(trained, tmp_path, capfd):
    _, state1 = trained
    with GridCheckpointer(
        tmp_path, config=CFG, num_classes=10, input_shape=SHAPE, seeds=SEEDS
    ) as ck:
        ck.save(3, state1)
    load_checkpoint(tmp_path, template=state1)
    with pytest.raises(UserError):
        load_checkpoint(tmp_path, 4, template=state1)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_existing_epoch_needs_overwrite(trained, tmp_path):
    state0, state1 = trained
    ck = GridCheckpointer(tmp_path, config=CFG, num_classes=10, input_shape=SHAPE, seeds=SEEDS)
    assert not (tmp_path / "checkpoints").exists()  # nothing written before the first save
    ck.save(4, state1)
    ck.save(2, state0)  # an epoch before the latest is saved too
    with pytest.raises(UserError, match="epoch 4 already exists"):
        ck.save(4, state0)
    ck.save(4, state0, overwrite=True)
    ck.close()
    _assert_bitwise_equal(load_checkpoint(tmp_path, 4, template=state0)[0], state0)
    assert available_epochs(tmp_path) == [2, 4]


def test_seeds_and_config_are_checked(trained, tmp_path):
    _, state1 = trained
    with pytest.raises(TypeError, match="seeds"):
        GridCheckpointer(tmp_path, config=CFG, num_classes=10, input_shape=SHAPE)
    with pytest.raises(TypeError, match="JSON dict"):
        GridCheckpointer(tmp_path, config=CONFIG, num_classes=10, input_shape=SHAPE, seeds=SEEDS)
    ck = GridCheckpointer(tmp_path, config=CFG, num_classes=10, input_shape=SHAPE, seeds=[0, 1])
    with pytest.raises(ValueError, match="2 seeds, the grid 3 members"):
        ck.save(1, state1)
    assert not (tmp_path / "checkpoints").exists()


# --------------------------------------------------------------------------- errors


def test_missing_epoch_lists_available(run_dir, trained):
    with pytest.raises(UserError) as e:
        load_checkpoint(run_dir, 7, template=trained[0])
    assert str(e.value) == (
        f"no checkpoint for epoch 7 in {run_dir / 'checkpoints'}; available: 0, 1, 2, 5"
    )


def test_no_checkpoints_writes_nothing(tmp_path, trained):
    missing = tmp_path / "none"
    with pytest.raises(UserError, match="no checkpoints in"):
        load_checkpoint(missing, template=trained[0])
    assert not missing.exists()


def test_different_model_names_the_leaf(run_dir):
    def other():
        model = build_model("mlp_si", 10, hidden=(8, 5))
        mask = init_model(model, jax.random.key(0), SHAPE).si_mask
        return GridTrainer(model, mask, batch_size=64).init(ELRS, SEEDS, SHAPE)

    with pytest.raises(UserError) as e:
        load_checkpoint(run_dir, 1, template=jax.eval_shape(other))
    msg = str(e.value)
    assert "\n" not in msg
    assert "does not match the template" in msg
    assert "params/SIDense_1/kernel has shape (3, 8, 4) in the checkpoint, (3, 8, 5)" in msg


def test_different_grid_size_is_named(run_dir, trainer):
    other = jax.eval_shape(lambda: trainer.init(ELRS[:2], SEEDS[:2], SHAPE))
    with pytest.raises(UserError, match="holds 3 members, 2 expected"):
        load_checkpoint(run_dir, 1, template=other)


def test_different_config_names_the_field(run_dir, trained):
    t = trained[0]
    other = CONFIG.replace(hidden=(8, 5))
    with pytest.raises(UserError, match=r"different model: hidden is \[8, 4\] there, \[8, 5\]"):
        load_checkpoint(run_dir, 1, template=t, config=other)
    with pytest.raises(UserError, match="model is 'mlp_si' there, 'convnet_si' here"):
        load_checkpoint(run_dir, 1, template=t, config={"model": "convnet_si", "dataset": "digits"})
    load_checkpoint(run_dir, 1, template=t, config=CONFIG.replace(epochs=99))  # not a model field
    load_checkpoint(run_dir, 1, template=t, config=CONFIG.to_flat() | {"epochs": 99})  # format 1


def test_config_difference_reads_both_formats():
    flat = CONFIG.to_flat()
    assert config_difference(flat, CFG) is None and config_difference(CFG, flat) is None
    assert config_difference(CFG, CONFIG.replace(init_scale=3.0, label_noise=0.5)) is None
    conv = CONFIG.replace(model="convnet_si")
    assert config_difference(conv, conv.replace(hidden=(1,))) is None  # not a ConvNetSI field
    assert config_difference(conv, conv.replace(depth=4)) == "depth is 3 there, 4 here"
    assert config_difference(CFG, CONFIG.replace(dataset="mnist")) == (
        "dataset is 'digits' there, 'mnist' here"
    )
    assert config_difference(CFG, CONFIG.replace(train_last_layer=True)) == (
        "train_last_layer is False there, True here"
    )


def test_unreadable_checkpoint_config_is_one_line():
    for bad in ({"model": "resnet"}, {"hidden": "wide"}, ["not", "a", "dict"], {"bogus": 1}):
        with pytest.raises(UserError, match="^the checkpoint's config is unreadable \\(") as e:
            config_difference(bad, CFG)
        assert "\n" not in str(e.value)


def _corrupt_metadata(step: Path) -> None:
    (step / "state" / "_METADATA").unlink()


def _corrupt_data(step: Path) -> None:
    for f in (step / "state" / "d").iterdir():
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))


def _truncate_data(step: Path) -> None:
    for f in (step / "state" / "d").iterdir():
        with open(f, "r+b") as fh:
            fh.truncate(10)


def _garble_meta(step: Path) -> None:
    (step / "meta" / "metadata").write_text("{not json")


def _drop_manifest(step: Path) -> None:
    (step / "state" / "manifest.ocdbt").unlink()


def _drop_state(step: Path) -> None:
    shutil.rmtree(step / "state")


@pytest.mark.parametrize(
    "damage",
    [_corrupt_metadata, _corrupt_data, _truncate_data, _garble_meta, _drop_manifest, _drop_state],
)
@pytest.mark.parametrize("abstract", [False, True])
def test_corrupt_checkpoint_is_one_clear_line(run_dir, trained, tmp_path, damage, abstract):
    d = _copy(run_dir, tmp_path)
    damage(d / "checkpoints" / "2")
    template = jax.eval_shape(lambda: trained[0]) if abstract else trained[0]
    with pytest.raises(UserError) as e:
        load_checkpoint(d, 2, template=template)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint at epoch 2 in {d / 'checkpoints'} is unreadable (")
    assert msg.endswith("; delete it or resume from an earlier one")
    assert "\n" not in msg and len(msg) < 400
    _assert_bitwise_equal(load_checkpoint(d, 1, template=template)[0], trained[1])


def test_orbax_tmp_dir_is_not_listed_and_next_save_removes_it(run_dir, trained, tmp_path):
    d = _copy(run_dir, tmp_path)
    tmp = d / "checkpoints" / "9.orbax-checkpoint-tmp-1700000000"  # an interrupted save
    shutil.copytree(d / "checkpoints" / "5", tmp)
    (d / "checkpoints" / "notes").mkdir()
    assert available_epochs(d) == [0, 1, 2, 5]
    assert load_checkpoint(d, template=trained[0])[1]["epoch"] == 5
    with GridCheckpointer(d, config=CFG, num_classes=10, input_shape=SHAPE, seeds=SEEDS) as ck:
        ck.save(9, trained[1])
    assert not tmp.exists() and (d / "checkpoints" / "notes").is_dir()
    assert available_epochs(d) == [0, 1, 2, 5, 9]


# --------------------------------------------------------------------------- older versions


def test_checkpoints_of_the_first_release_restore():
    """tests/data/v1_sweep: written by the first release (flat config, format 1)."""
    meta = read_meta(V1_SWEEP, 0)
    assert available_epochs(V1_SWEEP) == [0, 1, 2]
    assert meta["config"]["format_version"] == 1 and meta["config"]["hidden"] == [8, 4]
    assert meta["elr"] == [0.01, 0.1] and meta["seed"] == [0, 0] and meta["step"] == [0, 0]
    shape = tuple(meta["input_shape"])
    model = build_model("mlp_si", meta["num_classes"], hidden=(8, 4))
    mask = init_model(model, jax.random.key(0), shape).si_mask
    trainer = GridTrainer(model, mask, batch_size=64, strategy="map")
    template = jax.eval_shape(lambda: trainer.init(meta["elr"], meta["seed"], shape))
    wanted = Config.from_flat(model="mlp_si", hidden=(8, 4), elrs=(0.01, 0.1), batch_size=64)
    for epoch in (0, 2):
        state, meta = load_checkpoint(V1_SWEEP, epoch, template=template, config=wanted)
        assert isinstance(state, GridState) and meta["epoch"] == epoch
        _assert_same_specs(state, template)
        np.testing.assert_array_equal(state.opt_state.elr, np.float32([0.01, 0.1]))
        np.testing.assert_array_equal(state.step, meta["step"])
    assert meta["step"][0] > 0
    with pytest.raises(UserError, match=r"hidden is \[8, 4\] there, \[300, 100\] here"):
        load_checkpoint(V1_SWEEP, 1, template=template, config=Config())


def _assert_same_specs(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert (x.shape, x.dtype) == (y.shape, y.dtype)


def test_first_release_results_load_and_fine_tune(tmp_path):
    """The first release's results directory: load_results, the template from meta, a fine-tune."""
    from three_regimes_jax.storage.results import load_results
    from three_regimes_jax.studies.finetune import finetune_config, run_finetune
    from three_regimes_jax.studies.run import state_template

    old = load_results(V1_SWEEP)
    assert old.metrics["train_loss"].shape == (2, 2) and old.config["format_version"] == 1
    state, _ = load_checkpoint(V1_SWEEP, 2, template=state_template(read_meta(V1_SWEEP, 2)))
    assert state.size == 2
    # Fine-tuning at a member's own ELR continues the source run from epoch 1
    # (its first entry measures the source's epoch-1 state).
    cfg = finetune_config(V1_SWEEP, epoch=1, elrs=(0.01,), epochs=1, members=(0.01,))
    assert cfg.model.hidden == (8, 4) and cfg.train.batch_size == 64 and cfg.start_epoch == 1
    ft = run_finetune(cfg, out=tmp_path / "ft", progress=False)
    np.testing.assert_allclose(ft.metrics["train_loss"][0], old.metrics["train_loss"][0], rtol=1e-5)
