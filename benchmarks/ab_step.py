"""A/B of one model's training step between two jimunet source trees (e.g. main and a branch).

Each measurement runs in a fresh process with ``PYTHONPATH`` set to one tree's ``src``; the two
alternate, round after round, so drifting machine load hits both alike. Prints images/s per
round with the 1-minute load average at its start, and the median of the per-round ratios B/A;
also the CPU time per step (all threads), a steadier measure of work than wall time when the
machine is busy, and each process's peak resident memory. ``--model cifar_airbench`` (or any
``cifar_*``) steps on random 32×32×3 batches (airbench's whitening set from them), the others on
28×28×1.
``--profile`` instead prints, for each tree, the time of each layer class's forward and backward.

    git archive main src | tar -x -C /tmp/base
    python benchmarks/ab_step.py /tmp/base/src src --rounds 5
    python benchmarks/ab_step.py /tmp/base/src src --profile
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time

from bench_steps import jimunet_step


def _step_fn(model_name, batch):
    import numpy as np
    import jimunet as jn
    rng = np.random.default_rng(0)
    shape = (32, 32, 3) if model_name.startswith("cifar") else (28, 28, 1)
    x = ((rng.integers(0, 256, (batch, *shape)) - 127.5) / 255).astype(np.float32)
    y = rng.integers(0, 10, batch)
    model = getattr(jn.models, model_name)(rng=0)
    if model_name == "cifar_airbench":
        model.layers[0].weight.assign(jn.init.patch_whitening(x[:500], 2))
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    opt = jn.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, jimunet_step(model, loss_fn, opt, x, y)


def child(model_name, batch, threads, warm, iters, profile):
    import resource
    import jimunet as jn
    jn.set_num_threads(threads)
    model, step = _step_fn(model_name, batch)
    spent = collections.defaultdict(float)
    if profile:
        for layer in model.layers:
            for phase in ("forward", "backward") + (("forward_relu",) if hasattr(layer, "forward_relu") else ()):
                def timed(*a, _f=getattr(layer, phase), _k=(type(layer).__name__, phase), **k):
                    t = time.perf_counter()
                    try:
                        return _f(*a, **k)
                    finally:
                        spent[_k] += time.perf_counter() - t
                setattr(layer, phase, timed)
    for _ in range(warm):
        step()
    spent.clear()
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    total = (time.perf_counter() - t) / iters
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"{batch / total:.1f} {(time.process_time() - cpu) / iters * 1e3:.1f} {peak_mb:.0f}")
    for (name, phase), s in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:16s} {phase:12s} {s / iters * 1e3:7.2f} ms {s / iters / total * 100:5.1f}%")
    if profile:
        print(f"  {'the rest (loss, optimizer, graph sums)':34s} {(total - sum(spent.values()) / iters) * 1e3:6.2f} ms;"
              f" step {total * 1e3:.1f} ms")


def _run(src, args, profile=False):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    cmd = [sys.executable, __file__, "--child", args.model, str(args.batch), str(args.threads),
           str(args.warm), str(args.iters), str(int(profile))]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", nargs="?", help="tree A's src folder")
    ap.add_argument("b", nargs="?", help="tree B's src folder")
    ap.add_argument("--model", default="mnist_resnet")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        m, b, t, w, i, p = args.child
        child(m, int(b), int(t), int(w), int(i), p == "1")
        return 0
    if not args.a or not (args.b or args.profile):
        ap.error("give two src folders (one is enough with --profile)")
    if args.profile:
        for label, src in (("A", args.a), ("B", args.b)) if args.b else (("A", args.a),):
            print(f"{label} ({src}), load {os.getloadavg()[0]:.1f}:")
            print(_run(src, args, profile=True), end="", flush=True)
        return 0
    speed, cpu, peak = ({"A": [], "B": []} for _ in range(3))
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        for label in (("A", "B") if r % 2 == 0 else ("B", "A")):
            images, ms, mb = _run(args.a if label == "A" else args.b, args).split()[:3]
            speed[label].append(float(images))
            cpu[label].append(float(ms))
            peak[label].append(float(mb))
        print(f"round {r + 1}: load {load:.1f}, A {speed['A'][-1]:.0f} img/s ({cpu['A'][-1]:.0f} ms CPU/step, "
              f"{peak['A'][-1]:.0f} MB), B {speed['B'][-1]:.0f} img/s ({cpu['B'][-1]:.0f} ms CPU/step, "
              f"{peak['B'][-1]:.0f} MB), B/A {speed['B'][-1] / speed['A'][-1]:.3f}", flush=True)
    ratios = [b / a for a, b in zip(speed["A"], speed["B"])]
    print(f"{args.model} batch {args.batch}, {args.threads} threads: medians A {statistics.median(speed['A']):.0f},"
          f" B {statistics.median(speed['B']):.0f} img/s; B/A median {statistics.median(ratios):.3f}"
          f" (range {min(ratios):.3f}-{max(ratios):.3f}); CPU ms/step medians A {statistics.median(cpu['A']):.0f},"
          f" B {statistics.median(cpu['B']):.0f}; peak RSS MB medians A {statistics.median(peak['A']):.0f},"
          f" B {statistics.median(peak['B']):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
