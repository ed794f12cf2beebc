"""A/B of Conv2D's algorithms (im2col vs Winograd tiles) on single layers, for the ``auto`` rule.

Every measurement runs in a fresh process and the algorithms alternate, round after round,
so drifting machine load hits them alike; the table gives the median time per step and the
median of the per-round ratios im2col / Winograd (> 1: Winograd is faster).

    python benchmarks/conv_algorithms.py                       # the default shapes, 3 rounds
    python benchmarks/conv_algorithms.py --rounds 5 --batches 64 --modes infer

``infer`` times ``forward``; ``train`` times ``forward(training=True)`` + ``backward``
(dW, db and dX). Algorithms: ``im2col``, ``auto`` (what ``Conv2D`` picks) and
``winogradM`` (Winograd forced, M×M tiles).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

# name: (H=W, C_in, C_out, k)
SHAPES = {
    "conv1 28x28x1->32 5x5": (28, 1, 32, 5),
    "conv2 14x14x32->64 5x5": (14, 32, 64, 5),
    "28x28x8->16 5x5": (28, 8, 16, 5),
    "28x28x32->32 3x3": (28, 32, 32, 3),
    "14x14x64->64 3x3": (14, 64, 64, 3),
    "7x7x64->64 3x3": (7, 64, 64, 3),
}
ALGOS = ("im2col", "winograd4", "winograd2")


def _measure(shape, batch, mode, algo, reps):
    import numpy as np
    import jimunet as jn
    hw, c, o, k = SHAPES[shape]
    name, tile = (algo, None) if algo in ("im2col", "auto") else ("winograd", int(algo[len("winograd"):]))
    layer = jn.layers.Conv2D(c, o, k, algorithm=name, winograd_tile=tile, rng=0)
    x = np.random.default_rng(0).standard_normal((batch, hw, hw, c)).astype(np.float32)
    g = np.random.default_rng(1).standard_normal((batch, hw, hw, o)).astype(np.float32)

    def step():
        layer.forward(x, training=mode == "train")
        if mode == "train":
            layer.backward(g)
    step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 1000])
    ap.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--algos", nargs="+", default=list(ALGOS))
    ap.add_argument("--json", help="also write the raw times here")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        shape, batch, mode, algo = args.child
        batch = int(batch)
        print(_measure(shape, batch, mode, algo, reps=3 if batch >= 500 else 9))
        return 0
    import numpy  # noqa: F401  (loads the BLAS threadpoolctl reports)
    import threadpoolctl
    info = threadpoolctl.threadpool_info()
    print("BLAS:", ", ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                             f"({i.get('num_threads')} threads)" for i in info if i.get("user_api") == "blas"))
    raw = {}
    print("| shape | batch | mode | " + " | ".join(f"{a} ms" for a in args.algos) + " | " +
          " | ".join(f"{args.algos[0]}/{a}" for a in args.algos[1:]) + " |")
    print("|" + "---|" * (3 + 2 * len(args.algos) - 1))
    for shape in args.shapes:
        for batch in args.batches:
            for mode in args.modes:
                times = {a: [] for a in args.algos}
                for r in range(args.rounds):
                    order = args.algos if r % 2 == 0 else args.algos[::-1]
                    for a in order:
                        out = subprocess.run([sys.executable, __file__, "--child", shape, str(batch), mode, a],
                                             check=True, capture_output=True, text=True).stdout
                        times[a].append(float(out.strip().splitlines()[-1]))
                raw[f"{shape} | {batch} | {mode}"] = times
                med = {a: statistics.median(v) * 1e3 for a, v in times.items()}
                ratios = [statistics.median(x / y for x, y in zip(times[args.algos[0]], times[a]))
                          for a in args.algos[1:]]
                print(f"| {shape} | {batch} | {mode} | " + " | ".join(f"{med[a]:.1f}" for a in args.algos) +
                      " | " + " | ".join(f"{r:.2f}x" for r in ratios) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
