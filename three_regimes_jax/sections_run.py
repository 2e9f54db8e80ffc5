"""The config sections of how a grid executes and where it starts: checkpoints, run, fine-tune.

Re-exported by :mod:`three_regimes_jax.sections`; see :mod:`three_regimes_jax.config`.
"""

from __future__ import annotations

import dataclasses

from three_regimes_jax.errors import UserError
from three_regimes_jax.options import Section, option

STRATEGIES = ("auto", "vmap", "map")
PRECISIONS = ("highest", "high", "default")
DATA_KEYS = ("continue", "new")


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
      memory_limit_mb: the memory the grid may use (default: the device's
        limit, or the host's available RAM on CPU); a grid that does not fit
        trains in sequential chunks of members (:mod:`three_regimes_jax.engine.memory`).
      shard: ``"K/N"``: train only shard ``K`` (from 0) of ``N`` of the grid's
        members, a contiguous block in grid order (members ``K*G//N`` to
        ``(K+1)*G//N - 1``); ``three-regimes merge`` joins the N results
        directories into the unsharded run's.  Empty: the whole grid.
    """

    strategy: str = option("auto", "--strategy", "how members run", "str", choices=STRATEGIES)
    precision: str = option(
        "highest",
        "--precision",
        "float32 matmul/conv precision (highest: full FP32 as the paper; default: TF32 on GPU)",
        "str",
        choices=PRECISIONS,
    )
    memory_limit_mb: float | None = option(
        None,
        "--memory-limit-mb",
        "memory the grid may use (default: the device's)",
        "opt_float",
        low=1e-3,
    )
    shard: str = option(
        "",
        "--shard",
        "train only shard K of N of the members (K/N, K from 0; contiguous blocks)",
        "str",
    )

    def __post_init__(self):
        super().__post_init__()
        shard_of(self.shard)  # one clear line for a malformed value


def shard_of(text: str) -> tuple[int, int] | None:
    """``(K, N)`` of a ``--shard K/N`` value, None for ``""``.

    Raises:
      UserError: not two integers ``0 <= K < N``.
    """
    if not text:
        return None
    k, _, n = text.partition("/")
    if not (k.strip().isdigit() and n.strip().isdigit()) or not 0 <= int(k) < int(n):
        raise UserError(
            f"--shard takes K/N with 0 <= K < N (shard K of N, counted from 0), got {text!r}"
        )
    return int(k), int(n)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(Section):
    """Where a fine-tune starts: a checkpoint of a source run.

    Attributes:
      source: results directory of the source run (with checkpoints), or the
        shard directories of one sharded run, comma-separated.
      epoch: the source checkpoint to start from (0: the initialisation).
      members: source ELRs to fine-tune (empty: every source member).
      data_key: batch order, ``continue`` (the source's) or ``new``.
    """

    source: str = option(
        "",
        "--from",
        "the source run's results directory (or its shards' directories: DIR1,DIR2,...)",
        "str",
        nonempty=True,
        flat="source",
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
