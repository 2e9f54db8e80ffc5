"""Many processes, one grid: JAX's multi-controller runtime for ``sweep --distributed``.

Every process runs the same program on its own devices: it loads the dataset,
builds the same grid state from the seeds and calls the same compiled
functions, which split the members over *all* processes' devices
(:func:`~three_regimes_jax.engine.grid.split_over_devices`) and hand every
process the whole grid's outputs.  Only process 0 writes the results
directory; the others write nothing.  The batch order is the single-process
one (it comes from each member's seed).

:func:`initialize` starts the runtime: on SLURM, Open MPI and TPU pods JAX finds
the cluster itself; elsewhere it takes the coordinator address, the number of
processes and this process's id (flags, or ``THREE_REGIMES_COORDINATOR``,
``THREE_REGIMES_NUM_PROCESSES``, ``THREE_REGIMES_PROCESS_ID``).  On CPU the
processes talk through gloo collectives.

A process that dies ends the others within seconds: their next collective
fails, which is one line (:func:`sweep_distributed`), and nothing is written;
the command then exits at once (code 2) rather than wait for the runtime's
shutdown barrier.  ``THREE_REGIMES_HEARTBEAT_S`` (default 30) is how long the
runtime waits for a silent process.

Checkpoints: every process holds the whole grid (replicated), so process 0
saves its copy as a one-process Orbax checkpoint (``MultiprocessingOptions``
with process 0 the only active process: no collective, nothing from the
others), and ``--resume`` has every process read it back on its own.  The
saved grid does not depend on the process count, so a run checkpointed with
2 processes resumes with 1, 3 or 2 (bit for bit with ``map``); ``out`` must be
on a filesystem every process reads.  Barriers (:func:`~three_regimes_jax.
studies.run.sync_processes`) order the reads and writes: every process checks
``out``, then process 0 claims it, then every process reads the resume point,
then process 0 writes.
"""

from __future__ import annotations

import os
from typing import Any

import jax

from three_regimes_jax.errors import UserError

#: Seconds without a heartbeat before the runtime gives a lost process up (JAX's default: 100).
HEARTBEAT_S = int(os.environ.get("THREE_REGIMES_HEARTBEAT_S", "30"))


class LostProcess(UserError):
    """Another process of a ``--distributed`` run stopped: this one cannot go on."""


#: What a collective's error says when another process is gone.
LOST_PEER = ("Gloo", "Connection closed by peer", "heartbeat", "coordination service", "NCCL")
ENV = {
    "coordinator": "THREE_REGIMES_COORDINATOR",
    "num_processes": "THREE_REGIMES_NUM_PROCESSES",
    "process_id": "THREE_REGIMES_PROCESS_ID",
}


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 120,
) -> tuple[int, int]:
    """Starts JAX's multi-process runtime; returns ``(process_id, process_count)``.

    Args:
      coordinator: ``host:port`` of process 0 (None: the environment or auto-detection).
      num_processes: the number of processes.
      process_id: this process's id, from 0.
      timeout_s: how long to wait for the other processes.

    Raises:
      UserError: incomplete settings, or the processes could not connect.
    """
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for key, var in ENV.items():
        if given[key] is None and os.environ.get(var):
            given[key] = os.environ[var] if key == "coordinator" else int(os.environ[var])
    named = [k for k, v in given.items() if v is not None]
    if named and len(named) != 3:
        missing = ", ".join("--" + k.replace("_", "-") for k, v in given.items() if v is None)
        raise UserError(
            f"--distributed needs --coordinator, --num-processes and --process-id "
            f"together (or none, on SLURM/MPI/TPU); missing {missing}"
        )
    if named and not 0 <= given["process_id"] < given["num_processes"]:
        raise UserError(
            f"--process-id must be in [0, {given['num_processes']}), got {given['process_id']}"
        )
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=given["coordinator"],
            num_processes=given["num_processes"],
            process_id=given["process_id"],
            initialization_timeout=timeout_s,
            heartbeat_timeout_seconds=HEARTBEAT_S,
        )
    except Exception as e:  # noqa: BLE001 - JAX raises several types for this
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--distributed: the processes could not connect ({first[:200]})") from None
    return jax.process_index(), jax.process_count()


def sweep_distributed(
    config: Any,
    out: str,
    settings: tuple[str | None, int | None, int | None],
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> tuple[Any, int]:
    """``sweep --distributed``: one grid over every process's devices; process 0 writes ``out``.

    Args:
      config: the sweep.
      out: the results directory: process 0 writes it, every process reads a
        resume's checkpoint from it (a filesystem all processes share).
      settings: ``(coordinator, num_processes, process_id)`` (Nones: environment or
        auto-detection, see :func:`initialize`).
      overwrite: as ``run_sweep``.
      resume: continue from the latest checkpoint in ``out``.
      progress: the progress bar (process 0 only).

    Returns:
      ``(results, process_id)``.
    """
    from three_regimes_jax.studies.sweep import run_sweep

    rank, _ = initialize(*settings)
    try:
        res = run_sweep(
            config,
            out=out,
            overwrite=overwrite,
            resume=resume,
            progress=progress and rank == 0,
        )
    except Exception as e:
        text = str(e)
        if any(k in text for k in LOST_PEER):  # a collective lost its peer
            raise LostProcess(
                f"process {rank}: another process of the --distributed run stopped "
                f"({text.strip().splitlines()[0][:160]}); nothing was written"
            ) from None
        raise
    return res, rank


def _has_accelerator() -> bool:
    """Whether a GPU or TPU plugin is installed (without starting a backend)."""
    import importlib.util

    return any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "libtpu"))


__all__ = ["ENV", "LostProcess", "initialize", "sweep_distributed"]
