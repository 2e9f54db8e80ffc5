"""A grid split over several devices (4 forced CPU devices) equals the one-device grid.

The grid axis is padded to a multiple of the device count and each device runs its
own members (``engine.grid.split_over_devices``); padded members never reach an
output.  The 4-device runs happen in a subprocess (the device count is fixed when
JAX starts); the references are this process's single device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = """
import json, sys
import jax, numpy as np
from three_regimes_jax.engine.data import load_dataset
from three_regimes_jax.engine.models import build_model, si_mask_of
from three_regimes_jax.engine.trainer import GridTrainer
cases = json.loads(sys.argv[1])
ds = load_dataset("digits")
x, y = jax.numpy.asarray(ds.x_train[:200]), jax.numpy.asarray(ds.y_train[:200])
xt, yt = jax.numpy.asarray(ds.x_test[:100]), jax.numpy.asarray(ds.y_test[:100])
model = build_model("mlp_si", 10, hidden=(32, 16))
mask = si_mask_of(model, (8, 8, 1))
out = {"devices": jax.device_count()}
epochs = int(sys.argv[2])
for strategy, g in cases:
    t = GridTrainer(model, mask, batch_size=64, strategy=strategy)
    elrs = list(np.geomspace(1e-3, 1e-1, g))
    state = t.init(elrs, [i % 2 for i in range(g)], (8, 8, 1))
    for e in range(epochs):
        state, m = t.train_epoch(state, x, y, e)
    ev = t.evaluate(state, x, y, xt, yt) if epochs > 1 else {"test_loss": m["batch_loss"]}
    leaf = jax.tree.leaves(state.params)[0]
    out[f"{strategy}{g}"] = {
        "params": [np.asarray(p).tolist() for p in jax.tree.leaves(state.params)[:2]],
        "batch_loss": np.asarray(m["batch_loss"]).tolist(),
        "test_loss": np.asarray(ev["test_loss"]).tolist(),
        "shape": list(leaf.shape),
    }
print(json.dumps(out))
"""


def _run(devices: int, cases: list[tuple[str, int]], epochs: int = 2) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cases), str(epochs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _here(cases: list[tuple[str, int]], epochs: int = 2) -> dict:
    """The same script in this process (one device), sharing its compiled functions."""
    import contextlib
    import io

    argv, buf = sys.argv, io.StringIO()
    try:
        sys.argv = ["-c", json.dumps(cases), str(epochs)]
        with contextlib.redirect_stdout(buf):
            exec(compile(SCRIPT, "<devices script>", "exec"), {"__name__": "__main__"})
    finally:
        sys.argv = argv
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def _compare(four: dict, one: dict, cases: list[tuple[str, int]]) -> None:
    assert four["devices"] == 4 and one["devices"] == 1
    for strategy, g in cases:
        a, b = four[f"{strategy}{g}"], one[f"{strategy}{g}"]
        assert a["shape"][0] == g  # padded members are gone
        pairs = [*zip(a["params"], b["params"], strict=True)]
        pairs += [(a[k], b[k]) for k in ("batch_loss", "test_loss")]
        for x, y in pairs:
            if strategy == "map":
                assert x == y, f"map G={g} differs"  # bit for bit
            else:
                x, y = np.asarray(x), np.asarray(y)  # float rounding, relative to the scale
                assert np.max(np.abs(x - y)) <= 1e-4 * np.max(np.abs(y)), f"vmap G={g}"


def test_grid_of_6_over_4_devices_pads_and_equals_one_device():
    """``map``, one epoch: bit for bit, with 2 padded members.

    The slow test adds ``vmap``, G = 1, 4 and 10, a second epoch and the evaluation.
    """
    cases = [("map", 6)]
    _compare(_run(4, cases, epochs=1), _here(cases, epochs=1), cases)


@pytest.mark.slow
def test_grid_over_4_devices_every_strategy_and_size():
    cases = [(s, g) for s in ("map", "vmap") for g in (1, 4, 6, 10)]
    _compare(_run(4, cases), _run(1, cases), cases)
