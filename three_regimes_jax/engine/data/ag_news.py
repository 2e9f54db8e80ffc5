r"""AG News (Zhang et al., 2015): CSV / TFDS readers, a word tokenizer and a test split.

The original archive ``ag_news_csv/`` holds ``train.csv`` (120,000 rows) and
``test.csv`` (7,600 rows, 1,900 per class): fully quoted CSV rows ``"class
index (1-4)","title","description"`` with inner quotes doubled. Line breaks in
the texts are escaped with a backslash. The readme says ``\n``, but the files
in fact hold a bare backslash before the next line (``A second\team``,
``for social\network``), so every run of backslashes becomes one space; turning
only ``\n`` into a space would cut words such as ``\network`` into ``etwork``.
HTML entities that lost their ``&`` (``#39;``, ``quot;``) are decoded too.

Example:
    >>> ds = load_ag_news("/data", split_test=0.8, max_len=64)
    >>> ds.x_train.shape, ds.x_train.dtype
    ((6080, 64), dtype('int32'))
"""

from __future__ import annotations

import collections
import csv
import html
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from . import transforms
from .base import NUM_CLASSES, DataError, Dataset
from .tfds import TFDS_NAMES, read_tfds_splits

NAME = "ag_news"
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
# Lowercased text is split into runs of word characters (Unicode letters, digits,
# underscore) and single punctuation marks (any other non-space character).
TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_BACKSLASHES = re.compile(r"\\+")
_BARE_ENTITY = re.compile(r"(?<![&\w])(#\d+|quot|amp|lt|gt|apos);")


def clean_text(text: str) -> str:
    """Undoes the escaping of the original files (see the module docstring).

    Args:
        text: A title or description as stored in the CSV (or TFDS).

    Returns:
        The text with backslash runs replaced by a space and HTML entities
        (also those missing their ``&``, e.g. ``#39;`` -> ``'``) decoded.
    """
    text = _BACKSLASHES.sub(" ", text)
    return html.unescape(_BARE_ENTITY.sub(r"&\1;", text))


def read_ag_news_csv(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Reads one file of the original CSV (``train.csv`` or ``test.csv``).

    Args:
        path: The CSV file; rows are ``class index (1-4), title, description``.
            Blank lines are skipped.

    Returns:
        ``(labels, texts)``: int32 labels in 0..3 (class index - 1) and, per row,
        ``clean_text(title + " " + description)``.

    Raises:
        DataError: One line naming the file (and row) if it is unreadable or
            empty, a row does not have 3 fields or its class index is not 1..4.
    """
    path = Path(path)
    labels: list[int] = []
    texts: list[str] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for row_no, row in enumerate(csv.reader(f), start=1):
                if not row:
                    continue
                if len(row) != 3:
                    raise DataError(
                        f"malformed AG News file {path}, row {row_no}: expected 3 fields "
                        f"(class index, title, description), got {len(row)}"
                    )
                label = row[0].strip()
                if label not in ("1", "2", "3", "4"):
                    raise DataError(
                        f"bad class index {row[0][:20]!r} in AG News file {path}, row {row_no}: "
                        "expected 1, 2, 3 or 4"
                    )
                labels.append(int(label) - 1)
                texts.append(clean_text(f"{row[1]} {row[2]}"))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read AG News file {path}: {reason}") from None
    if not labels:
        raise DataError(f"AG News file {path} is empty; re-download ag_news_csv")
    return np.asarray(labels, np.int32), texts


def _decode(value) -> str:
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_ag_news_tfds(
    data_dir: str | os.PathLike | None, splits: tuple[str, ...] = ("train", "test")
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Reads prepared TFDS ``ag_news_subset`` splits (no TensorFlow, no download).

    Args:
        data_dir: TFDS data directory (``None``: the TFDS default).
        splits: Splits to read.

    Returns:
        ``{split: (labels, texts)}`` with int32 labels 0..3 and texts
        ``clean_text(title + " " + description)``, as from the CSV.

    Raises:
        DataError: If tensorflow_datasets is missing or the dataset is not prepared.
    """
    out = {}
    for split, examples in read_tfds_splits(TFDS_NAMES[NAME], splits, data_dir).items():
        labels = np.array([int(e["label"]) for e in examples], np.int32)
        if labels.min() < 0 or labels.max() >= NUM_CLASSES[NAME]:
            raise DataError(f"TFDS 'ag_news_subset' {split} labels outside [0, 4); corrupt data?")
        texts = [clean_text(f"{_decode(e['title'])} {_decode(e['description'])}") for e in examples]
        out[split] = (labels, texts)
    return out


def tokenize(text: str) -> list[str]:
    """Lowercases ``text`` and splits it with :data:`TOKEN_RE` (words, punctuation)."""
    return TOKEN_RE.findall(text.lower())


def build_vocab(texts: Iterable[str], vocab_size: int) -> dict[str, int]:
    """Word -> id map from (training) texts.

    Args:
        texts: The texts to count words in (the training texts only).
        vocab_size: Total number of ids, ``>= 2``: ``0 = <pad>``, ``1 = <unk>``,
            then the ``vocab_size - 2`` most frequent words, ties broken
            alphabetically (so the result is deterministic). Fewer ids if there
            are fewer distinct words; every id is ``< vocab_size``.

    Returns:
        The vocabulary, including ``<pad>`` and ``<unk>``.

    Raises:
        DataError: If ``vocab_size < 2``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise DataError(f"--vocab-size must be an integer >= 2, got {vocab_size!r}")
    if vocab_size < 2:
        raise DataError(f"--vocab-size must be >= 2 (<pad> and <unk>), got {vocab_size}")
    counts = collections.Counter(tok for text in texts for tok in tokenize(text))
    words = sorted(counts, key=lambda w: (-counts[w], w))[: vocab_size - 2]
    vocab = {PAD: PAD_ID, UNK: UNK_ID}
    vocab.update({w: i + 2 for i, w in enumerate(words)})
    return vocab


def encode(texts: Sequence[str], vocab: dict[str, int], max_len: int) -> np.ndarray:
    """Token ids of ``texts``, truncated to ``max_len`` and right-padded with 0.

    Args:
        texts: Texts to encode.
        vocab: From :func:`build_vocab`; unknown words map to ``<unk>`` (1).
        max_len: Length of every row, ``>= 1``.

    Returns:
        int32 ``[len(texts), max_len]``.

    Raises:
        DataError: If ``max_len < 1``.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise DataError(f"--max-len must be an integer >= 1, got {max_len!r}")
    out = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
        ids = [vocab.get(tok, UNK_ID) for tok in tokenize(text)[:max_len]]
        out[i, : len(ids)] = ids
    return out


def split_test(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of a labelled set into a training and an evaluation part.

    For each class (in increasing order) the class's indices are permuted with
    ``numpy.random.default_rng(seed)`` and the first ``floor(fraction * n_class +
    0.5)`` (rounding half up) go to the training part, the rest to the
    evaluation part.

    Args:
        labels: int labels ``[N]``.
        fraction: Fraction of each class for training, in (0, 1).
        seed: Seed of the permutation (fixed: the split is deterministic).

    Returns:
        ``(train_idx, eval_idx)``: sorted int64 index arrays, disjoint, covering
        ``range(N)``.

    Raises:
        DataError: If ``fraction`` is not in (0, 1).
    """
    _check_fraction(fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(np.floor(fraction * len(idx) + 0.5))
        train.append(idx[:k])
        held.append(idx[k:])

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)

    return cat(train), cat(held)


_stratified_split = split_test  # load_ag_news's keyword ``split_test`` shadows it


def _check_fraction(fraction: float) -> None:
    ok = isinstance(fraction, (int, float, np.floating)) and not isinstance(fraction, bool)
    if not ok or not 0.0 < fraction < 1.0:
        raise DataError(f"--split-test must be a fraction in (0, 1), e.g. 0.8, got {fraction!r}")


def csv_dirs(base: Path) -> list[Path]:
    """Folders searched for the CSV files below ``base``, in order."""
    return [base, base / "ag_news_csv", base / NAME, base / NAME / "ag_news_csv"]


def _find_csv(base: Path | None) -> Path | None:
    if base is None:
        return None
    return next((d for d in csv_dirs(base) if (d / "test.csv").is_file()), None)


def _load_texts(
    data_dir: str | os.PathLike | None, use_split: bool, source: str
) -> tuple[tuple[np.ndarray, list[str]], tuple[np.ndarray, list[str]] | None]:
    """``(test, train)`` labels and texts; ``train`` is None when ``use_split``."""
    base = Path(data_dir).expanduser() if data_dir is not None else None
    tried = []
    if source in ("auto", "files"):
        folder = _find_csv(base)
        if folder is not None:
            test = read_ag_news_csv(folder / "test.csv")
            if use_split:
                return test, None
            if (folder / "train.csv").is_file():
                return test, read_ag_news_csv(folder / "train.csv")
            raise DataError(
                f"{folder} holds the test split only (test.csv, no train.csv); pass "
                "--split-test 0.8 to train on 80% of it and evaluate on the rest"
            )
        if base is None:
            tried.append("files: no directory given (data_dir=None)")
        else:
            tried.append(f"test.csv in {', '.join(map(str, csv_dirs(base)))}")
    if source in ("auto", "tfds"):
        try:
            splits = ("test",) if use_split else ("train", "test")
            data = read_ag_news_tfds(base, splits)
            return data["test"], data.get("train")
        except DataError as e:
            tried.append(str(e))
    raise DataError(
        f"dataset 'ag_news' not found; tried {'; '.join(tried)}. Fix: pass --data-dir DIR "
        "where DIR or DIR/ag_news_csv holds train.csv and test.csv (test.csv alone with "
        "--split-test 0.8), or prepare TFDS 'ag_news_subset' "
        "(tfds build ag_news_subset --file_format=array_record)"
    )


def load_ag_news(
    data_dir: str | os.PathLike | None,
    *,
    split_test: float | None = None,
    vocab_size: int = 20000,
    max_len: int = 64,
    use_data_size: int | None = None,
    label_noise: float = 0.0,
    noise_seed: int = 0,
    source: str = "auto",
) -> Dataset:
    """Loads AG News as token ids.

    Steps: read texts; with ``split_test``, split ``test.csv`` (stratified, seed
    0); keep the first ``use_data_size`` training examples; build the vocabulary
    from those training texts only; encode both parts; add label noise to the
    training labels.

    Args:
        data_dir: Folder holding ``test.csv`` (and ``train.csv``) directly or in
            ``ag_news_csv/``, ``ag_news/`` or ``ag_news/ag_news_csv/``; also the
            TFDS ``data_dir`` (``None``: TFDS default, no CSV search).
        split_test: Train on this fraction (in (0, 1)) of each class of the test
            split and evaluate on the rest. The official train split is then NOT
            used, even when ``train.csv`` exists. ``None``: train on ``train.csv``
            and evaluate on ``test.csv`` (an error if only ``test.csv`` exists).
        vocab_size: Number of token ids (``>= 2``; see :func:`build_vocab`).
        max_len: Tokens per example after truncation / padding (``>= 1``).
        use_data_size: Keep only the first N training examples.
        label_noise: Fraction in [0, 1] of training labels resampled uniformly.
        noise_seed: Seed of the label-noise generator.
        source: ``"files"``, ``"tfds"`` (``ag_news_subset``) or ``"auto"``
            (CSV if found, else TFDS).

    Returns:
        A :class:`Dataset` with int32 token ids ``[N, max_len]`` as ``x_train`` /
        ``x_test`` (0 = padding) and int32 labels in 0..3.

    Raises:
        DataError: On invalid options (naming the flag), missing data (naming
            everything tried) or malformed files.
    """
    if split_test is not None:
        _check_fraction(split_test)
    build_vocab([], vocab_size)  # validates vocab_size
    encode([], {}, max_len)  # validates max_len
    if not 0.0 <= label_noise <= 1.0:
        raise DataError(f"--label-noise must be in [0, 1], got {label_noise!r}")
    if source not in ("auto", "files", "tfds"):
        raise DataError(f"unknown source {source!r}; choose one of: auto, files, tfds")
    (y_test, t_test), train = _load_texts(data_dir, split_test is not None, source)
    if train is None:
        train_idx, test_idx = _stratified_split(y_test, split_test)
        if not len(train_idx) or not len(test_idx):
            raise DataError(
                f"--split-test {split_test} leaves an empty part of the {len(y_test)} "
                "test examples; choose a fraction nearer 0.5"
            )
        y_train, t_train = y_test[train_idx], [t_test[i] for i in train_idx]
        y_test, t_test = y_test[test_idx], [t_test[i] for i in test_idx]
    else:
        y_train, t_train = train
    if use_data_size is not None:
        keep, y_train = transforms.use_data_size(np.arange(len(y_train)), y_train, use_data_size)
        t_train = [t_train[i] for i in keep]
    vocab = build_vocab(t_train, vocab_size)
    num_classes = NUM_CLASSES[NAME]
    y_train = transforms.add_label_noise(y_train, label_noise, num_classes, noise_seed)
    return Dataset(
        NAME,
        encode(t_train, vocab, max_len),
        np.asarray(y_train, np.int32),
        encode(t_test, vocab, max_len),
        np.asarray(y_test, np.int32),
        num_classes,
    )
