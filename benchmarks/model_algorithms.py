"""Whole-model A/B: ``mnist_cnn`` (tasks train64, infer1000) or ``cifar_airbench`` (airbench1024,
airbench-infer1000) with every Conv2D forced to im2col vs ``algorithm="auto"``.

Each measurement runs in a fresh process and the two alternate, round after round, so
drifting machine load hits both alike; prints images/s per round and the median of the
per-round ratios auto / im2col.

    python benchmarks/model_algorithms.py --rounds 5 --tasks train64 infer1000
    python benchmarks/model_algorithms.py --rounds 3 --tasks airbench1024 airbench-infer1000
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from bench_steps import jimunet_step

TASKS = {"train64": ("train", 64, 3, 30), "infer1000": ("infer", 1000, 1, 5),  # kind, batch, warm-up, timed
         "airbench1024": ("train", 1024, 1, 3), "airbench-infer1000": ("infer", 1000, 1, 3)}


def _images_per_second(algorithm, task):
    import numpy as np
    import jimunet as jn
    kind, batch, warm, iters = TASKS[task]
    rng = np.random.default_rng(0)
    airbench = task.startswith("airbench")
    shape = (32, 32, 3) if airbench else (28, 28, 1)
    x = ((rng.integers(0, 256, (batch, *shape)) - 127.5) / 255).astype(np.float32)
    y = rng.integers(0, 10, batch)
    model = jn.models.cifar_airbench(rng=0) if airbench else jn.models.mnist_cnn(rng=0)
    if airbench:
        model.layers[0].weight.assign(jn.init.patch_whitening(x[:500], 2))
    for layer in model.layers:
        if isinstance(layer, jn.layers.Conv2D):
            layer.algorithm = algorithm
    if kind == "infer":
        def step():
            model.predict(x)
    else:
        loss_fn = jn.losses.SoftmaxCrossEntropy()
        opt = jn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = jimunet_step(model, loss_fn, opt, x, y)
    for _ in range(warm):
        step()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(_images_per_second(*args.child))
        return 0
    for task in args.tasks:
        speed = {"im2col": [], "auto": []}
        for r in range(args.rounds):
            for algorithm in (("im2col", "auto") if r % 2 == 0 else ("auto", "im2col")):
                out = subprocess.run([sys.executable, __file__, "--child", algorithm, task],
                                     capture_output=True, text=True, check=True).stdout
                speed[algorithm].append(float(out.split()[-1]))
        ratios = [b / a for a, b in zip(speed["im2col"], speed["auto"])]
        print(f"{task}: im2col {[round(v) for v in speed['im2col']]} img/s, auto "
              f"{[round(v) for v in speed['auto']]} img/s; medians {statistics.median(speed['im2col']):.0f} / "
              f"{statistics.median(speed['auto']):.0f}; auto / im2col per round "
              f"{[round(v, 2) for v in ratios]}, median {statistics.median(ratios):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
