"""Tests of three_regimes_jax.engine.data: readers, TFDS path, digits and transforms."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from three_regimes_jax.engine.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    Dataset,
    files,
    load_dataset,
    pad_to,
    transforms,
)

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real MNIST not found at {MNIST_DIR} (shared data folder absent)",
)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THREE_REGIMES_DATA_DIR", raising=False)


# ---------------------------------------------------------------- writers of original formats


def write_idx(path: Path, a: np.ndarray) -> None:
    """Writes ``a`` (uint8) as an idx file, gzip-compressed if the name ends in .gz."""
    raw = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True) -> tuple:
    """Writes a tiny MNIST in idx format; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, a in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), a)
    return tuple(arrays.values())


def cifar_record(images: np.ndarray, labels: list[int], key: bytes) -> dict:
    """A batch dict as in the original pickles (bytes keys, [N, 3072] channel planes)."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # NHWC -> R, G, B planes
    rec = {b"batch_label": b"testing batch", b"data": data, key: list(labels)}
    rec[b"filenames"] = [b"img_%d.png" % i for i in range(len(images))]
    if key == b"fine_labels":
        rec[b"coarse_labels"] = [lab // 5 for lab in labels]
    return rec


def write_cifar(folder: Path, name: str, per_file: int = 2) -> np.ndarray:
    """Writes tiny CIFAR pickles (protocol 2, no meta file); returns all train images."""
    sub, train, test, key = files.CIFAR_LAYOUT[name]
    out = folder / sub
    out.mkdir(parents=True)
    n_cls = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(2)
    all_train = []
    for j, fname in enumerate((*train, test)):
        imgs = rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8)
        labels = [(j * per_file + i) * 7 % n_cls for i in range(per_file)]
        with open(out / fname, "wb") as f:
            pickle.dump(cifar_record(imgs, labels, key.encode()), f, protocol=2)
        if fname != test:
            all_train.append(imgs)
    return np.concatenate(all_train)


# ------------------------------------------------------------------------------- real MNIST


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist", MNIST_DIR, source="files")


@needs_mnist
def test_mnist_real(mnist: Dataset) -> None:
    assert mnist.x_train.shape == (60000, 28, 28, 1) and mnist.x_test.shape == (10000, 28, 28, 1)
    assert mnist.x_train.dtype == np.float32 and mnist.y_train.dtype == np.int32
    assert mnist.num_classes == 10 and mnist.image_shape == (28, 28, 1)
    assert np.bincount(mnist.y_train).tolist() == MNIST_COUNTS
    assert abs(float(mnist.x_train.mean(dtype=np.float64))) < 1e-3
    raw_mean = (mnist.x_train.mean(dtype=np.float64) * MNIST_STD[0] + MNIST_MEAN[0]) * 255
    assert raw_mean == pytest.approx(33.318, abs=1e-3)


@needs_mnist
@pytest.mark.parametrize("env_dir", [MNIST_DIR, MNIST_DIR.parent], ids=["folder", "parent"])
def test_mnist_env_var(env_dir: Path, mnist: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREE_REGIMES_DATA_DIR", str(env_dir))
    ds = load_dataset("mnist", use_data_size=100)
    np.testing.assert_array_equal(ds.x_train, mnist.x_train[:100])
    np.testing.assert_array_equal(ds.y_test, mnist.y_test)


# ------------------------------------------------------------------------------- idx files


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    a = np.arange(2 * 3 * 4, dtype=dtype).reshape(2, 3, 4) * 3
    path = tmp_path / ("x" + suffix)
    code = 0x08 if dtype == np.uint8 else 0x0C
    raw = (
        bytes([0, 0, code, 3])
        + np.asarray(a.shape, ">u4").tobytes()
        + a.astype(a.dtype.newbyteorder(">")).tobytes()
    )
    path.write_bytes(gzip.compress(raw) if suffix else raw)
    b = files.read_idx(path)
    assert b.dtype == dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_files_tiny(tmp_path: Path, gz: bool) -> None:
    xtr, ytr, _, yte = write_mnist(tmp_path / "mnist", gz=gz)
    ds = load_dataset("mnist", tmp_path, source="files")  # parent of mnist/
    assert ds.x_train.shape == (12, 28, 28, 1) and ds.x_test.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(ds.y_train, ytr)
    np.testing.assert_array_equal(ds.y_test, yte)
    expected = (xtr[..., None] / np.float32(255) - MNIST_MEAN[0]) / MNIST_STD[0]
    np.testing.assert_allclose(ds.x_train, expected, rtol=1e-5, atol=1e-5)


def test_mnist_dotted_names(tmp_path: Path) -> None:
    xtr, *_ = write_mnist(tmp_path, gz=False)
    for p in tmp_path.iterdir():  # train-images-idx3-ubyte -> train-images.idx3-ubyte
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    x, *_ = files.load_mnist(files.find_mnist([tmp_path]))
    np.testing.assert_array_equal(x[..., 0], xtr)


def test_idx_bad_magic_and_truncated(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x12\x34\x56\x78" + bytes(100)))
    with pytest.raises(DataError, match="magic.*train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)
    raw = tmp_path / "t.idx"
    raw.write_bytes(bytes([0, 0, 8, 1]) + np.asarray([10], ">u4").tobytes() + bytes(5))
    with pytest.raises(DataError, match="truncated.*t.idx"):
        files.read_idx(raw)
    bad.write_bytes(gzip.compress(bytes(1000))[:50])  # cut gzip stream
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)


# ------------------------------------------------------------------------------- CIFAR


def test_cifar10_pickles(tmp_path: Path) -> None:
    imgs = write_cifar(tmp_path, "cifar10")
    assert not (tmp_path / "cifar-10-batches-py" / "batches.meta").exists()
    # A known pixel: image 3, row 4, column 5, green; stored at plane offset 1024 + 4*32 + 5.
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    assert batch[b"data"][1, 1024 + 4 * 32 + 5] == imgs[3, 4, 5, 1]
    for where in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = load_dataset("cifar10", where, source="files")
        assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (2, 32, 32, 3)
        assert ds.num_classes == 10 and ds.y_train.dtype == np.int32
        assert ds.y_train.tolist() == [i * 7 % 10 for i in range(10)]
        value = (batch[b"data"][1, 1024 + 4 * 32 + 5] / 255 - CIFAR_MEAN[1]) / CIFAR_STD[1]
        assert ds.x_train[3, 4, 5, 1] == pytest.approx(value, abs=1e-5)
        expected = (imgs / np.float32(255) - np.float32(CIFAR_MEAN)) / np.float32(CIFAR_STD)
        np.testing.assert_allclose(ds.x_train, expected, rtol=1e-5, atol=1e-5)


def test_cifar100_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imgs = write_cifar(tmp_path / "cifar100", "cifar100", per_file=4)
    monkeypatch.setenv("THREE_REGIMES_DATA_DIR", str(tmp_path))  # parent of cifar100/
    ds = load_dataset("cifar100", source="files")
    assert ds.num_classes == 100 and ds.x_train.shape == (4, 32, 32, 3)
    assert ds.y_train.tolist() == [0, 7, 14, 21] and ds.y_test.tolist() == [28, 35, 42, 49]
    r, g, b = (imgs[2, 31, 0, c] / 255 for c in range(3))
    expected = [(v - m) / s for v, m, s in zip((r, g, b), CIFAR_MEAN, CIFAR_STD, strict=True)]
    np.testing.assert_allclose(ds.x_train[2, 31, 0], expected, rtol=1e-5, atol=1e-5)


def test_cifar_rejects_foreign_pickle(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar100")
    with open(tmp_path / "cifar-100-python" / "test", "wb") as f:
        pickle.dump({b"data": os.getcwd}, f)  # any non-numpy global is refused
    with pytest.raises(DataError, match="cifar-100-python.test.*forbidden"):
        load_dataset("cifar100", tmp_path)


# ------------------------------------------------------------------------------- TFDS


def test_tfds_mock() -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = load_dataset("mnist", source="tfds", pad_to=32)
        cifar = load_dataset("cifar100", source="tfds")
    assert ds.x_train.shape == (6, 32, 32, 1) and ds.x_test.shape == (6, 32, 32, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert cifar.x_train.shape == (6, 32, 32, 3) and cifar.num_classes == 100
    assert cifar.y_train.max() < 100


def test_auto_falls_back_to_tfds(tmp_path: Path) -> None:
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):
        ds = load_dataset("cifar10", tmp_path)  # no files there
    assert ds.x_train.shape == (3, 32, 32, 3)


# ------------------------------------------------------------------------------- digits


def test_digits() -> None:
    ds = load_dataset("digits", "/nonexistent/is/ignored")
    assert (ds.num_train, ds.num_test, ds.image_shape, ds.num_classes) == (1437, 360, (8, 8, 1), 10)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int32
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    assert abs(ds.x_train.mean()) < 1e-5 and ds.x_train.std() == pytest.approx(1.0, abs=1e-5)
    again = load_dataset("digits")
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)


def test_digits_needs_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'three_regimes_jax\[demo\]'"):
        load_dataset("digits")


# ------------------------------------------------------------------------------- transforms


def test_use_data_size() -> None:
    full = load_dataset("digits")
    ds = load_dataset("digits", use_data_size=100)
    assert ds.num_train == 100 and ds.num_test == 360
    np.testing.assert_array_equal(ds.x_train, full.x_train[:100])
    np.testing.assert_array_equal(ds.y_train, full.y_train[:100])
    for bad in (0, 1438, -5):
        with pytest.raises(DataError, match="--use-data-size"):
            load_dataset("digits", use_data_size=bad)


def test_label_noise() -> None:
    clean = load_dataset("digits", use_data_size=1000)
    assert np.array_equal(
        load_dataset("digits", label_noise=0.0).y_train, load_dataset("digits").y_train
    )
    a = load_dataset("digits", use_data_size=1000, label_noise=0.3, noise_seed=5)
    b = load_dataset("digits", use_data_size=1000, label_noise=0.3, noise_seed=5)
    c = load_dataset("digits", use_data_size=1000, label_noise=0.3, noise_seed=6)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    changed = np.flatnonzero(a.y_train != clean.y_train)
    chosen = transforms.label_noise_indices(1000, 0.3, seed=5)
    assert len(chosen) == 300 and len(set(chosen.tolist())) == 300
    assert 0.8 * 300 < len(changed) <= 300  # ~90% of resampled labels change
    assert set(changed.tolist()) <= set(chosen.tolist())
    assert not np.array_equal(a.y_train, c.y_train)
    np.testing.assert_array_equal(a.y_test, clean.y_test)
    np.testing.assert_array_equal(a.x_train, clean.x_train)
    assert a.y_train.dtype == np.int32 and a.y_train.max() < 10
    for bad in (-0.1, 1.5):
        with pytest.raises(DataError, match="--label-noise"):
            load_dataset("digits", label_noise=bad)


def test_pad_to() -> None:
    x = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28, 1) + 1
    y = pad_to(x, 32)
    assert y.shape == (2, 32, 32, 1)
    np.testing.assert_array_equal(y[:, 2:30, 2:30], x)
    assert y.sum() == x.sum() and not y[:, :2].any() and not y[:, :, 30:].any()
    assert pad_to(x, 28) is x
    with pytest.raises(DataError, match="pad"):
        pad_to(x, 27)
    ds = load_dataset("digits", pad_to=32)
    assert ds.image_shape == (32, 32, 1) and ds.x_test.shape == (360, 32, 32, 1)
    assert not ds.x_train[:, :12].any() and ds.x_train[:, 12:20, 12:20].any()


# ------------------------------------------------------------------------------- errors


def test_missing_dataset_names_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data-dir .*nowhere does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(DataError, match="--data-dir .* is not a directory"):
        load_dataset("mnist", Path(__file__))
    where = tmp_path / "nothing"
    where.mkdir()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", where, source="files")
    msg = str(err.value)
    assert str(where) in msg and str(where / "mnist") in msg and "train-images-idx3-ubyte" in msg
    assert "\n" not in msg and "THREE_REGIMES_DATA_DIR" in msg
    with pytest.raises(DataError, match="no directory given"):
        load_dataset("cifar10", source="files")
    with pytest.raises(DataError, match="cifar-10-batches-py.*TFDS 'cifar10'"):
        load_dataset("cifar10", where)  # auto: files, then TFDS at that data_dir


def test_unknown_name_and_source() -> None:
    with pytest.raises(DataError, match="digits, mnist, cifar10, cifar100, ag_news"):
        load_dataset("imagenet")
    assert DATASETS == ("digits", "mnist", "cifar10", "cifar100", "ag_news")
    with pytest.raises(DataError, match="source"):
        load_dataset("mnist", source="web")
