"""The sections of the config tree: one frozen dataclass per concern, every field declared once.

See :mod:`three_regimes_jax.config` for the tree and :func:`~three_regimes_jax.options.option`
for what a field declares.
"""

from __future__ import annotations

import dataclasses

from three_regimes_jax.errors import UserError
from three_regimes_jax.options import Section, option

# Names the engine registers; tests check that the registries match.
MODEL_NAMES = (
    "mlp_si",
    "convnet_si",
    "convnet_si_af",
    "resnet18_si",
    "resnet18_si_af",
    "resnet18",
    "transformer",
)
DATASET_NAMES = ("digits", "mnist", "cifar10", "cifar100", "ag_news")
TRAIN_MODES = ("sphere", "whole")
#: ``TrainConfig`` fields (also their flat names) that apply to ``--train whole`` only.
WHOLE_ONLY = ("lrs", "weight_decays", "schedule", "noninv_lr")
#: Optimizers and sphere partitions of ``--train sphere`` (``engine.sphere_opt``).
OPTIMIZERS = ("sgd", "riemannian_sgd", "sphere_momentum", "sphere_adam", "sgdp", "adamp")
SPHERES = ("total", "layer", "filter")
RETRACTIONS = ("normalize", "exp")
SPHERE_ONLY = ("optimizer", "sphere", "betas", "retraction", "elr_schedules")
SCHEDULES = ("constant", "cosine")
POSITIONAL = ("sinusoidal", "learned")
POOLING = ("mean", "first")
#: ``train.elrs`` when not set; a whole-space run (which sweeps ``lrs``) has none.
DEFAULT_ELRS = (1e-3, 1e-2, 1e-1, 1.0)
#: The width ``k`` of each model when ``model.width`` is not set (paper App. C).
DEFAULT_WIDTH = {"convnet_si": 32, "convnet_si_af": 32, "resnet18_si": 32}
DEFAULT_WIDTH |= {"resnet18_si_af": 32, "resnet18": 64}
GRIDS = ("product", "zip")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The architecture.

    Attributes:
      name: ``mlp_si`` (paper App. O), ``convnet_si`` (App. C), ``convnet_si_af``
        (ConvNetSI with affine BN and a trainable head, for conventional
        training), ``resnet18_si`` (the SI ResNet-18 of App. C/D),
        ``resnet18_si_af`` (its affine, trainable-head twin), ``resnet18``
        (conventional ResNet-18, Sec. 6) or ``transformer`` (AG News, App. O).
      width: width factor ``k`` of the ConvNets and ResNets (None: the model's
        paper default, :data:`DEFAULT_WIDTH`: 32, and 64 for ``resnet18``;
        the paper uses 64 for ConvNet on CIFAR-100).
      depth: ConvNetSI depth.
      hidden: MLP-SI hidden widths.
      d_model: Transformer model width (paper: 32).
      heads: Transformer attention heads (paper: 1).
      layers: Transformer encoder layers (paper: N = 1).
      d_ff: Transformer feed-forward width (not in the paper: 4 x d_model, as
        in Vaswani et al.).
      positional: Transformer positional encoding (not in the paper).
      pooling: how the Transformer pools tokens for the classifier (not in the paper).
      dropout: Transformer dropout in training steps (not in the paper: 0).
      init_scale: norm of the frozen last layer's weight (paper: 10).
      train_last_layer: train the last layer (a non-SI parameter) instead of
        freezing it.
      per_seed_head: draw the last layer from each member's seed.  By default
        every seed shares seed 0's last layer, as the official code's
        ``same_last_layer`` does (so a seed-0 run is unchanged).
    """

    name: str = option("mlp_si", "--model", "the architecture", "str", choices=MODEL_NAMES)
    width: int | None = option(
        None,
        "--width",
        "width factor k (default: the model's, 32; 64 for resnet18)",
        "opt_int",
        low=1,
    )
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
    d_model: int = option(32, "--d-model", "Transformer width", "int", low=1)
    heads: int = option(1, "--heads", "Transformer attention heads", "int", low=1)
    layers: int = option(1, "--layers", "Transformer encoder layers", "int", low=1)
    d_ff: int = option(128, "--d-ff", "Transformer feed-forward width", "int", low=1)
    positional: str = option(
        "sinusoidal", "--positional", "Transformer positional encoding", "str", choices=POSITIONAL
    )
    pooling: str = option("mean", "--pooling", "Transformer token pooling", "str", choices=POOLING)
    dropout: float = option(
        0.0, "--dropout", "Transformer dropout in training steps", "float", low=0.0, high=0.99
    )


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """The dataset.

    Attributes:
      dataset: ``digits`` (embedded), ``mnist``, ``cifar10``, ``cifar100`` or ``ag_news``.
      data_dir: folder with the original files (else ``THREE_REGIMES_DATA_DIR``, then TFDS).
      use_data_size: train on the first N training examples only.
      label_noise: fraction of training labels replaced by uniformly random ones.
      noise_seed: seed of the label noise.
      use_test_size: evaluate on the first N test examples only (quick runs).
      split_test: AG News only: train on this fraction of the test file
        (stratified, fixed seed) and evaluate on the rest, for machines that
        have only the test split (``../shared/data/ag_news_csv``).
      vocab_size: AG News vocabulary size, ``<pad>`` and ``<unk>`` included
        (built from the training texts only).
      max_len: AG News tokens per text (longer texts are truncated).
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
    use_test_size: int | None = option(
        None, "--use-test-size", "evaluate on the first N test examples only", "opt_int", low=1
    )
    split_test: float | None = option(
        None,
        "--split-test",
        "ag_news: train on this fraction of the test file, evaluate on the rest",
        "opt_float",
        low=1e-6,
        high=1.0 - 1e-6,
    )
    vocab_size: int = option(20000, "--vocab-size", "ag_news vocabulary size", "int", low=2)
    max_len: int = option(64, "--max-len", "ag_news tokens per text", "int", low=1)


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
      mode: ``sphere`` (fixed-ELR projected SGD on the sphere, Sec. 4) or
        ``whole`` (SGD in the whole parameter space, the official ``fix_lr``
        mode: Sec. 6 and App. N).  A whole-space grid is ``lrs x
        weight_decays x seeds``, LR-major.
      lrs: whole space: the initial learning rates swept.
      weight_decays: whole space: the L2 weight decays swept (coupled, as
        PyTorch's SGD: ``g += wd * theta`` before momentum).
      momentum: whole space: heavy-ball momentum as PyTorch (dampening 0);
        on the sphere: ``beta`` of ``sphere_momentum`` and ``sgdp``.
      optimizer: on the sphere: ``sgd`` (the paper's projected SGD),
        ``riemannian_sgd``, ``sphere_momentum``, ``sphere_adam``, or the
        baselines ``sgdp``/``adamp`` (not on a fixed sphere); see
        :mod:`three_regimes_jax.engine.sphere_opt` for each update and ELR.
      sphere: ``total`` (all SI parameters, the paper's), ``layer`` (each SI
        leaf) or ``filter`` (each output filter, as the official ``fix_all_elr``).
      betas: Adam's ``(beta1, beta2)`` (``sphere_adam``, ``adamp``).
      retraction: ``normalize`` or ``exp`` (great circle), for
        ``riemannian_sgd``, ``sphere_momentum`` and ``sphere_adam``.
      elr_schedules: on the sphere, the ELR schedules swept, one grid axis
        outside the ELRs (members ``schedules x elrs x seeds``); see
        :mod:`three_regimes_jax.engine.schedules`.
      schedule: whole space: ``constant`` or ``cosine`` (PyTorch's
        CosineAnnealingLR with ``T_max = epochs``, stepped per epoch).
      noninv_lr: whole space: learning rate of the non-SI parameters (the
        official ``noninvlr``): ``-1`` the main LR (and its schedule), ``0``
        frozen, else this fixed value.
      augment: random crop 32 with padding 4 and horizontal flips of the
        training batches (images of 32 x 32 only; metric passes never augment).
    """

    elrs: tuple[float, ...] = option(
        DEFAULT_ELRS,
        "--elrs",
        "comma-separated ELRs, e.g. 1e-4,1e-3,1e-2",
        "floats",
        positive=True,
        unique=True,
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
    mode: str = option(
        "sphere",
        "--train",
        "sphere (fixed ELR) or whole (SGD in the whole space)",
        "str",
        choices=TRAIN_MODES,
        flat="train_mode",
    )
    lrs: tuple[float, ...] = option(
        (),
        "--lrs",
        "--train whole: comma-separated learning rates",
        "floats",
        positive=True,
        unique=True,
    )
    weight_decays: tuple[float, ...] = option(
        (0.0,),
        "--weight-decays",
        "--train whole: comma-separated weight decays",
        "floats",
        low=0.0,
        unique=True,
        nonempty=True,
    )
    momentum: float = option(
        0.0,
        "--momentum",
        "heavy-ball momentum in [0, 1): --train whole, or --optimizer sphere_momentum|sgdp",
        "float",
        low=0.0,
    )
    optimizer: str = option(
        "sgd",
        "--optimizer",
        "optimizer on the sphere (sgd: the paper's)",
        "str",
        choices=OPTIMIZERS,
    )
    sphere: str = option(
        "total", "--sphere", "sphere of the SI parameters: total, layer or filter", "str",
        choices=SPHERES,
    )  # fmt: skip
    betas: tuple[float, ...] = option(
        (0.9, 0.999), "--betas", "Adam's beta1,beta2 (sphere_adam, adamp)", "floats", low=0.0
    )
    retraction: str = option(
        "normalize", "--retraction", "normalize or exp (great circle)", "str", choices=RETRACTIONS
    )
    elr_schedules: tuple[str, ...] = option(
        ("constant",),
        "--elr-schedules",
        "ELR schedules swept (a grid axis): constant, cosine, step:G@E1+E2, warmup:W, "
        "warmup_cosine:W, regime:ELR2@E",
        "strs",
        unique=True,
        nonempty=True,
    )
    schedule: str = option(
        "constant", "--schedule", "--train whole: LR schedule", "str", choices=SCHEDULES
    )
    noninv_lr: float = option(
        -1.0,
        "--noninv-lr",
        "--train whole: LR of non-SI parameters (-1: the LR, 0: frozen)",
        "float",
        low=-1.0,
    )
    augment: bool = option(
        False,
        "--augment",
        "random crop (padding 4) and horizontal flip of training batches",
        "bool",
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mode == "whole" and self.elrs == DEFAULT_ELRS:
            object.__setattr__(self, "elrs", ())
        if self.momentum >= 1.0:
            raise UserError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.noninv_lr < 0 and self.noninv_lr != -1.0:
            raise UserError(
                f"--noninv-lr must be -1 (the LR), 0 (frozen) or > 0, got {self.noninv_lr}"
            )
        if self.mode == "sphere":
            wrong = [
                f.metadata["flag"]
                for f in dataclasses.fields(self)
                if f.name in WHOLE_ONLY and getattr(self, f.name) != f.default
            ]
            if wrong:
                raise UserError(
                    f"{wrong[0]} applies to --train whole only; on the sphere sweep --elrs "
                    "(or pass --train whole)"
                )
            if not self.elrs:
                raise UserError("--elrs is empty: give at least one value")
            self._check_optimizer()
        else:
            if self.elrs:
                raise UserError("--elrs applies to --train sphere only; --train whole sweeps --lrs")
            if not self.lrs:
                raise UserError("--train whole needs --lrs (comma-separated learning rates)")
            if self.random_walk or self.random_walk_from is not None:
                raise UserError("--random-walk applies to --train sphere only")
            for f in dataclasses.fields(self):
                if f.name in SPHERE_ONLY and getattr(self, f.name) != f.default:
                    raise UserError(f"{f.metadata['flag']} applies to --train sphere only")
            if self.grid == "zip":
                raise UserError(
                    "--grid zip applies to --train sphere only; a whole-space grid is "
                    "--lrs x --weight-decays x --seeds"
                )

    def _check_optimizer(self) -> None:
        """Which flags go with which ``--optimizer`` (sphere mode)."""
        opt, adam = self.optimizer, self.optimizer in ("sphere_adam", "adamp")
        if self.momentum and opt not in ("sphere_momentum", "sgdp"):
            raise UserError(
                f"--momentum on the sphere goes with --optimizer sphere_momentum or sgdp, not {opt}"
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"--betas takes beta1,beta2 in [0, 1), got {self.betas}")
        if self.betas != (0.9, 0.999) and not adam:
            raise UserError(f"--betas applies to --optimizer sphere_adam or adamp, not {opt}")
        if self.sphere != "total" and opt in ("sgdp", "adamp"):
            raise UserError(f"--optimizer {opt} is not on a sphere: drop --sphere {self.sphere}")
        if self.retraction != "normalize" and opt in ("sgd", "sgdp", "adamp"):
            raise UserError(
                f"--retraction goes with riemannian_sgd, sphere_momentum or sphere_adam, not {opt}"
            )
        if self.random_walk and (opt != "sgd" or self.sphere != "total"):
            raise UserError("--random-walk replaces SGD's steps: use it with --optimizer sgd only")
        if self.random_walk and self.elr_schedules != ("constant",):
            raise UserError("--random-walk takes constant ELRs: drop --elr-schedules")
        from three_regimes_jax.elr_schedules import parse_schedule

        for spec in self.elr_schedules:
            parse_schedule(spec, 1.0)


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


# The sections of how a run executes and where it starts (re-exported here).
from three_regimes_jax.sections_run import (  # noqa: E402
    DATA_KEYS,
    PRECISIONS,
    STRATEGIES,
    CheckpointConfig,
    FinetuneConfig,
    RunConfig,
)

__all__ = [
    "DATA_KEYS",
    "PRECISIONS",
    "STRATEGIES",
    "CheckpointConfig",
    "FinetuneConfig",
    "RunConfig",
]
