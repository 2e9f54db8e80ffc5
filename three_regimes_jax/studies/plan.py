"""Planning a grid before running it: members, memory, chunks, shards and wall time.

:func:`plan_sweep` reads a sweep config and, without loading the dataset or
training anything, works out:

- the grid: members, steps per epoch and member-steps (from the dataset's split
  sizes, :data:`SPLIT_SIZES`, and the config's subsets);
- memory: the planner's bytes per member (:mod:`~three_regimes_jax.engine.memory`,
  from shapes alone), the dataset's bytes, how many members fit in one device
  (``run.memory_limit_mb`` or the device's limit), and the sequential chunks;
- shards: for ``gpus`` accelerators, ``--shard K/N`` with ``N = min(gpus, G)``
  and the members each shard trains;
- wall time, from one of: a given ms per member-step (``step_ms``, e.g. read
  from ``benchmarks/RESULTS.md``), a short timed run here (``time_steps``
  steps of a one-chunk grid on synthetic data, compiled first), or an assumed
  throughput (``tflops``) applied to XLA's FLOP count of one step.  An epoch
  costs its training steps plus the metric passes, counted as one step per
  training batch (train loss and effective gradient norm need the gradient)
  and a third of a step per test batch (forward only).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from three_regimes_jax.config import Config
from three_regimes_jax.engine.data import NUM_CLASSES
from three_regimes_jax.engine.grid import member
from three_regimes_jax.engine.memory import MB, device_limit_bytes, member_bytes, plan_chunks
from three_regimes_jax.engine.models import input_size_of
from three_regimes_jax.engine.train import make_train_step
from three_regimes_jax.errors import UserError

#: Train and test examples of each dataset's full splits.
SPLIT_SIZES = {
    "digits": (1437, 360),
    "mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
    "ag_news": (120000, 7600),
}
#: One example's shape before padding (ag_news: token ids, see ``data.max_len``).
IMAGE_SHAPES = {"digits": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
IMAGE_SHAPES["cifar100"] = (32, 32, 3)
#: A metric pass over a test batch costs this fraction of a training step (forward only).
TEST_PASS_COST = 1.0 / 3.0


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a sweep will cost (see the module docstring); :meth:`text` prints it."""

    config: Config
    members: int
    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    steps_per_epoch: int
    member_bytes: dict[str, int]
    shared_bytes: int
    limit_bytes: int | None
    fit: int | None
    chunks: int
    gpus: int
    step_ms: float | None
    step_source: str
    flops: float | None

    @property
    def member_steps(self) -> int:
        """Training steps of all members over all epochs."""
        return self.members * self.steps_per_epoch * self.config.train.epochs

    @property
    def step_equivalents_per_epoch(self) -> float:
        """One member's epoch in training-step units: the steps plus the metric passes."""
        b = self.config.train.batch_size
        return (
            self.steps_per_epoch
            + math.ceil(self.n_train / b)
            + TEST_PASS_COST * math.ceil(self.n_test / b)
        )

    def hours(self, devices: int) -> float | None:
        """Wall hours on ``devices`` devices running the shards in parallel."""
        if self.step_ms is None:
            return None
        per_device = math.ceil(self.members / max(1, min(devices, self.members)))
        seconds = per_device * self.step_equivalents_per_epoch * self.config.train.epochs
        return seconds * self.step_ms / 1e3 / 3600

    def shards(self) -> list[str]:
        """``--shard K/N`` with each shard's member count, for ``gpus`` devices."""
        n = max(1, min(self.gpus, self.members))
        sizes = [(k + 1) * self.members // n - k * self.members // n for k in range(n)]
        return [f"--shard {k}/{n} ({s} member{'s' * (s != 1)})" for k, s in enumerate(sizes)]

    def text(self) -> str:
        """The plan as the ``plan`` command prints it."""
        c, mb = self.config, self.member_bytes
        lines = [
            f"grid: {self.members} members of {c.model.name} on {c.data.dataset} "
            f"({self.n_train} train / {self.n_test} test examples, input "
            f"{'x'.join(map(str, self.input_shape))}), {c.train.epochs} epochs",
            f"steps: {self.steps_per_epoch} per epoch (batch {c.train.batch_size}); "
            f"member-steps: {self.member_steps:,}",
            f"memory per member: ~{mb['total'] / MB:.1f} MB (state {mb['state'] / MB:.1f}, "
            f"gradients {mb['gradients'] / MB:.1f}, activations {mb['activations'] / MB:.1f}); "
            f"dataset: {self.shared_bytes / MB:.1f} MB",
        ]
        if self.limit_bytes is None:
            lines.append("device memory: unknown (no chunking planned)")
        else:
            lines.append(
                f"per device ({self.limit_bytes / MB:,.0f} MB, 80% usable): {self.fit} members "
                f"fit; the grid runs as {self.chunks} chunk(s) on one device"
            )
        lines.append(f"shards for {self.gpus} GPU(s): " + ", ".join(self.shards()))
        if self.step_ms is None:
            lines.append("time: give --step-ms, --time-steps or --tflops for an estimate")
        else:
            flops = f", {self.flops / 1e9:.3g} GFLOP per step (XLA)" if self.flops else ""
            lines.append(
                f"time: {self.step_ms:.4g} ms per member-step ({self.step_source}{flops}); "
                f"{self.step_equivalents_per_epoch:.0f} step-equivalents per member-epoch with "
                f"the metric passes"
            )
            for d in sorted({1, self.gpus}):
                lines.append(f"  on {d} device(s): ~{_duration(self.hours(d))}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "members": self.members,
            "steps_per_epoch": self.steps_per_epoch,
            "member_steps": self.member_steps,
            "member_mb": self.member_bytes["total"] / MB,
            "shared_mb": self.shared_bytes / MB,
            "fit_per_device": self.fit,
            "chunks": self.chunks,
            "shards": self.shards(),
            "step_ms": self.step_ms,
            "step_source": self.step_source,
            "hours": {str(d): self.hours(d) for d in sorted({1, self.gpus})},
        }


def _duration(hours: float | None) -> str:
    if hours is None:
        return "unknown"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days ({hours:,.0f} h)"


def data_shape(config: Config) -> tuple[int, int, tuple[int, ...], int]:
    """``(n_train, n_test, input_shape, num_classes)`` of a config's data, without loading it."""
    d = config.data
    n_train, n_test = SPLIT_SIZES[d.dataset]
    if d.dataset == "ag_news":
        if d.split_test is not None:  # the test file split into train and eval
            n_train = int(round(d.split_test * n_test))
            n_test -= n_train
        shape: tuple[int, ...] = (d.max_len,)
    else:
        shape = IMAGE_SHAPES[d.dataset]
        size = input_size_of(config.model.name)
        if size is not None:
            shape = (size, size, shape[2])
    if d.use_data_size:
        n_train = min(n_train, d.use_data_size)
    if d.use_test_size:
        n_test = min(n_test, d.use_test_size)
    return n_train, n_test, shape, NUM_CLASSES[d.dataset]


def _synthetic(shape: tuple[int, ...], n: int, config: Config):
    kx, ky = jax.random.split(jax.random.key(0))
    if config.data.dataset == "ag_news":
        x = jax.random.randint(kx, (n, *shape), 0, config.data.vocab_size)
    else:
        x = jax.random.normal(kx, (n, *shape), jnp.float32)
    return x, jax.random.randint(ky, (n,), 0, NUM_CLASSES[config.data.dataset])


def plan_sweep(
    config: Config,
    *,
    gpus: int = 1,
    step_ms: float | None = None,
    time_steps: int = 0,
    tflops: float | None = None,
) -> Plan:
    """The :class:`Plan` of a sweep config (see the module docstring).

    Raises:
      UserError: a fine-tune config (plan its source's sweep), or more than one
        way to get the step time.
    """
    from three_regimes_jax.studies.run import make_trainer

    if config.finetune is not None:
        raise UserError("plan takes a sweep config; a fine-tune's cost follows its source's grid")
    if sum(x is not None and x != 0 for x in (step_ms, time_steps, tflops)) > 1:
        raise UserError("give one of --step-ms, --time-steps and --tflops")
    n_train, n_test, shape, classes = data_shape(config)
    b = config.train.batch_size
    steps = n_train // b if config.train.drop_last else math.ceil(n_train / b)
    trainer = make_trainer(config, classes, shape)
    g = config.grid_size
    state = jax.eval_shape(lambda: trainer.init(config.member_hypers, config.member_seeds, shape))
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
    per = member_bytes(trainer.model, one, shape, max(b, trainer.eval_batch_size))
    shared = (n_train + n_test) * (math.prod(shape) + 1) * 4  # float32 / int32 inputs, labels
    limit_mb = config.run.memory_limit_mb
    limit = device_limit_bytes() if limit_mb is None else int(limit_mb * MB)
    fit = chunks = None
    if limit is not None:
        mem = plan_chunks(g, per["total"], shared, limit)
        fit, chunks = mem.chunk_size, mem.chunks
    source, flops = "not measured", None
    if step_ms is not None:
        source = "given"
    elif tflops:
        x, y = _synthetic(shape, b, config)
        concrete = trainer.init(config.member_hypers[:1], config.member_seeds[:1], shape)
        step = jax.jit(make_train_step(trainer.model, trainer.si_mask, trainer.optimizer))
        cost = step.lower(member(concrete, 0), x, y).compile().cost_analysis()
        flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
        step_ms = flops / (tflops * 1e12) * 1e3
        source = f"XLA's FLOPs at an assumed {tflops:g} TFLOP/s"
    elif time_steps:
        step_ms = _timed_ms(trainer, config, shape, min(g, fit or g), time_steps)
        source = f"timed here: {time_steps} steps on {jax.devices()[0].device_kind}"
    return Plan(
        config, g, n_train, n_test, shape, steps, per, shared, limit,
        fit, chunks or 1, gpus, step_ms, source, flops,
    )  # fmt: skip


def _timed_ms(trainer, config: Config, shape, members: int, steps: int) -> float:
    """Milliseconds per member-step of one compiled epoch (``steps`` batches, ``members``)."""
    b = config.train.batch_size
    x, y = _synthetic(shape, steps * b, config)
    state = trainer.init(config.member_hypers[:members], config.member_seeds[:members], shape)
    epoch = jnp.asarray(0, jnp.uint32)
    compiled = trainer.train_epoch_fn.lower(state, x, y, epoch).compile()
    jax.block_until_ready(compiled(state, x, y, epoch))  # warm-up
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(state, x, y, epoch + 1))
    return (time.perf_counter() - t0) * 1e3 / (members * steps)


__all__ = ["SPLIT_SIZES", "Plan", "data_shape", "plan_sweep"]
