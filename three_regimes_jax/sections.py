"""The sections of the config tree: one frozen dataclass per concern, every field declared once.

See :mod:`three_regimes_jax.config` for the tree and :func:`~three_regimes_jax.options.option`
for what a field declares.
"""

from __future__ import annotations

import dataclasses

from three_regimes_jax.options import Section, option

# Names the engine registers; tests check that the registries match.
MODEL_NAMES = ("mlp_si", "convnet_si")
DATASET_NAMES = ("digits", "mnist", "cifar10", "cifar100")
STRATEGIES = ("auto", "vmap", "map")
GRIDS = ("product", "zip")
PRECISIONS = ("highest", "high", "default")
DATA_KEYS = ("continue", "new")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The architecture.

    Attributes:
      name: ``mlp_si`` (paper App. O) or ``convnet_si`` (App. C).
      width: ConvNetSI width ``k``.
      depth: ConvNetSI depth.
      hidden: MLP-SI hidden widths.
      init_scale: norm of the frozen last layer's weight (paper: 10).
      train_last_layer: train the last layer (a non-SI parameter) instead of
        freezing it.
      per_seed_head: draw the last layer from each member's seed.  By default
        every seed shares seed 0's last layer, as the official code's
        ``same_last_layer`` does (so a seed-0 run is unchanged).
    """

    name: str = option("mlp_si", "--model", "the architecture", "str", choices=MODEL_NAMES)
    width: int = option(32, "--width", "ConvNetSI width k", "int", low=1)
    depth: int = option(3, "--depth", "ConvNetSI depth", "int", low=1)
    hidden: tuple[int, ...] = option(
        (300, 100), "--hidden", "MLP-SI hidden widths", "ints", low=1, nonempty=True
    )
    init_scale: float = option(
        10.0, "--init-scale", "norm of the frozen last layer", "float", low=1e-30
    )
    train_last_layer: bool = option(
        False, "--train-last-layer", "train the last layer instead of freezing it", "bool"
    )
    per_seed_head: bool = option(
        False,
        "--per-seed-head",
        "draw the last layer per seed (default: one head for all seeds, as the official code)",
        "bool",
    )


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """The dataset.

    Attributes:
      dataset: ``digits`` (embedded), ``mnist``, ``cifar10`` or ``cifar100``.
      data_dir: folder with the original files (else ``THREE_REGIMES_DATA_DIR``, then TFDS).
      use_data_size: train on the first N training examples only.
      label_noise: fraction of training labels replaced by uniformly random ones.
      noise_seed: seed of the label noise.
    """

    dataset: str = option("digits", "--dataset", "the dataset", "str", choices=DATASET_NAMES)
    data_dir: str | None = option(
        None, "--data-dir", "folder with the original files (or THREE_REGIMES_DATA_DIR)", "opt_str"
    )
    use_data_size: int | None = option(
        None, "--use-data-size", "train on the first N examples only", "opt_int", low=1
    )
    label_noise: float = option(
        0.0, "--label-noise", "fraction of noisy training labels", "float", low=0.0, high=1.0
    )
    noise_seed: int = option(0, "--noise-seed", "seed of the label noise", "int", low=0)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """The grid and how it trains.

    The grid is ``elrs x seeds``, ELR-major: member ``i * len(seeds) + j`` has
    ELR ``elrs[i]`` and seed ``seeds[j]``.  A seed fixes a member's init and
    batch order; with one seed every member shares both, as in the paper.

    Attributes:
      elrs: effective learning rates, each > 0.
      seeds: seeds.
      epochs: epochs to train (a fine-tune: epochs after its source epoch).
      batch_size: mini-batch size (paper: 128).
      drop_last: drop each epoch's last partial batch (default keeps it, as PyTorch).
      random_walk: the random-walk baseline (App. M): random tangent directions
        replace the gradients.
      random_walk_from: the regular run at the same ELRs whose steps the random
        walk replicates in length (App. M: "to replicate the respective step
        size of a regular training"); without it, a step has the length of the
        gradient at the random walk's own point.
      grid: ``product`` (every ELR with every seed, ELR-major) or ``zip``
        (ELR ``i`` with seed ``i``: a different seed per ELR, paper Fig. 12).
    """

    elrs: tuple[float, ...] = option(
        (1e-3, 1e-2, 1e-1, 1.0),
        "--elrs",
        "comma-separated ELRs, e.g. 1e-4,1e-3,1e-2",
        "floats",
        positive=True,
        unique=True,
        nonempty=True,
    )
    seeds: tuple[int, ...] = option(
        (0,), "--seeds", "comma-separated seeds", "ints", low=0, unique=True, nonempty=True
    )
    epochs: int = option(10, "--epochs", "epochs to train", "int", low=1)
    batch_size: int = option(128, "--batch-size", "mini-batch size", "int", low=1)
    drop_last: bool = option(False, "--drop-last", "drop the last partial batch", "bool")
    random_walk: bool = option(
        False,
        "--random-walk",
        "random-walk baseline (App. M): random tangent steps of the gradient's length",
        "bool",
    )
    random_walk_from: str | None = option(
        None,
        "--random-walk-from",
        "regular run (results dir) whose per-epoch step lengths the random walk replicates",
        "opt_str",
    )
    grid: str = option(
        "product",
        "--grid",
        "members: every ELR with every seed (product) or ELR i with seed i (zip)",
        "str",
        choices=GRIDS,
    )


@dataclasses.dataclass(frozen=True)
class MeasureConfig(Section):
    """Measurements beyond the per-epoch losses (App. B).

    Attributes:
      sharpness_every: measure sharpness every K epochs and at the last one (0: off).
      sharpness_size: the fixed training subset (the first examples); 0: all of them.
      sharpness_probes: Hutchinson probes of the FIM and Hessian traces.
      sharpness_iters: Lanczos steps of the top eigenvalues.
      filter_groups: also record the statistics of every filter (output channel
        or unit of an SI kernel) as its own group, ``[G, T, n_filters]``.
      filter_log_steps: ``(start, end)``: also log the per-filter statistics of
        every optimizer step in ``[start, end)`` (global step numbers), for the
        members in ``filter_log_elrs`` (all if empty); memory grows with
        ``members x steps x filters``, so it is opt-in (paper Fig. 20).
      filter_log_elrs: the ELRs of the members to log.
    """

    sharpness_every: int = option(0, "--sharpness-every", "every K epochs (0: off)", "int", low=0)
    sharpness_size: int = option(
        2048, "--sharpness-size", "training subset size (0: the whole training set)", "int", low=0
    )
    sharpness_probes: int = option(8, "--sharpness-probes", "Hutchinson probes", "int", low=1)
    sharpness_iters: int = option(20, "--sharpness-iters", "Lanczos iterations", "int", low=1)
    filter_groups: bool = option(
        False,
        "--filter-groups",
        "also record per-filter ELR, effective gradient norm and ESS (Figs. 4, 20, 21)",
        "bool",
    )
    filter_log_steps: tuple[int, ...] = option(
        (),
        "--filter-log-steps",
        "START,END: per-filter stats of every step in [START, END) (Fig. 20, --filter-groups)",
        "ints",
        low=0,
    )
    filter_log_elrs: tuple[float, ...] = option(
        (),
        "--filter-log-elrs",
        "members (by ELR) whose steps --filter-log-steps logs (default: all)",
        "floats",
        positive=True,
        unique=True,
    )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
    """When to save Orbax checkpoints of the whole grid.

    With any checkpointing on, the first and the last epoch are always saved.

    Attributes:
      epochs: these epochs (0 = the initial state).
      every: also every N epochs (0: off).
      log: also the paper's log-spaced schedule (every epoch below 20, every
        5th below 100, every 10th below 200, every 50th below 1000, ...).
    """

    epochs: tuple[int, ...] = option(
        (), "--checkpoint-epochs", "comma-separated epochs, e.g. 0,1,5", "ints", low=0, unique=True
    )
    every: int = option(0, "--checkpoint-every", "every N epochs", "int", low=0)
    log: bool = option(False, "--checkpoint-log", "the paper's log-spaced schedule", "bool")

    @property
    def enabled(self) -> bool:
        """Whether any checkpoint is requested."""
        return bool(self.epochs or self.every or self.log)


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
    """How the grid executes (never changes the numbers beyond float rounding).

    Attributes:
      strategy: ``auto``, ``vmap`` or ``map`` (``engine.grid.choose_strategy``).
      precision: ``jax.default_matmul_precision`` of every compiled function:
        ``highest`` (full float32, as the paper's PyTorch runs; the default),
        ``high`` or ``default`` (TF32/bf16 passes on GPUs and TPUs).  CPUs
        compute float32 in full either way.
    """

    strategy: str = option("auto", "--strategy", "how members run", "str", choices=STRATEGIES)
    precision: str = option(
        "highest",
        "--precision",
        "float32 matmul/conv precision (highest: full FP32 as the paper; default: TF32 on GPU)",
        "str",
        choices=PRECISIONS,
    )


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(Section):
    """Where a fine-tune starts: a checkpoint of a source run.

    Attributes:
      source: results directory of the source run (with checkpoints).
      epoch: the source checkpoint to start from (0: the initialisation).
      members: source ELRs to fine-tune (empty: every source member).
      data_key: batch order, ``continue`` (the source's) or ``new``.
    """

    source: str = option(
        "", "--from", "the source run's results directory", "str", nonempty=True, flat="source"
    )
    epoch: int = option(0, "--epoch", "source checkpoint epoch (default: the latest)", "int", low=0)
    members: tuple[float, ...] = option(
        (),
        "--members",
        "source ELRs to fine-tune (default: all)",
        "floats",
        positive=True,
        unique=True,
    )
    data_key: str = option(
        "continue", "--data-key", "batch order: continue or new", "str", choices=DATA_KEYS
    )
