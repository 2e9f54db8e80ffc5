"""Cost of one in-loop sharpness evaluation relative to one training epoch.

Run: ``.venv/bin/python benchmarks/bench_sharpness.py [--data-dir ../shared/data/mnist]``

MNIST MLP-SI (784-300-100), a grid of 5 ELRs, batch 128: times one
``GridTrainer.train_epoch`` (469 steps) + ``evaluate`` and one
``GridTrainer.sharpness`` call (2,048-example subset, 8 probes, 20 Lanczos
steps), each the median of a few repeats after a compile/warm-up call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from three_regimes_jax.config import Config
from three_regimes_jax.engine.loop import DeviceData
from three_regimes_jax.studies.run import load_data, make_trainer


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = Config.from_flat(
        dataset="mnist", data_dir=args.data_dir, elrs=(1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    )
    ds = load_data(cfg)
    data = DeviceData.from_dataset(ds)
    trainer = make_trainer(cfg, ds.num_classes, ds.image_shape)
    state = trainer.init(cfg.member_elrs, cfg.member_seeds, ds.image_shape)
    sub = (data.x_train[:2048], data.y_train[:2048])
    key = jax.random.key(0)

    def epoch():
        s, m = trainer.train_epoch(state, data.x_train, data.y_train, 0)
        return s, m, trainer.evaluate(s, data.x_train, data.y_train, data.x_test, data.y_test)

    t_epoch = _median_time(epoch, args.repeats)
    t_sharp = _median_time(lambda: trainer.sharpness(state, *sub, key), args.repeats)
    print(f"backend {jax.default_backend()}, G={state.size}, strategy {trainer.strategy}")
    print(f"train epoch + evaluate: {t_epoch:.2f} s")
    print(f"one sharpness evaluation (2048 examples, 8 probes, 20 Lanczos): {t_sharp:.2f} s")
    print(f"ratio sharpness / epoch: {t_sharp / t_epoch:.2f}")


if __name__ == "__main__":
    main()
