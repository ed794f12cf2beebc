"""Time one data-parallel training step, split into compute, waiting and communication.

Run under MPI (each rank takes its slice of the global batch, as ``jimunet train --distributed``)::

    mpiexec -n 1 python benchmarks/distributed_step.py --steps 30
    mpiexec -n 2 --oversubscribe python benchmarks/distributed_step.py --steps 30

``--reduction allreduce`` (default here), per step, on every rank: ``compute`` (forward and
backward of its slice, including the dropout draw and BatchNorm's exchange of per-channel
sums), ``wait`` (a barrier: the time it waits
for the slowest rank, i.e. load imbalance and noise from other jobs), ``allreduce`` (the one
MPI_Allreduce of the flat gradient buffer, the ranks already in step), ``update`` (the SGD
step). Then ``--reduce-only`` more all-reduces alone, back to back, measure the pure
communication cost of the buffer.

``--reduction exact`` times ``Trainer.train_step`` itself (``jimunet train --distributed``'s
default): ``step`` and ``communication`` (its two all-gathers, waiting for the slower rank
included; ``Trainer.comm_seconds``), ``compute`` (the rest: the rank's blocks through the
convolutional layers, the head on the whole batch, the update).

``--phases`` (one process, no MPI needed) splits one process's step the way the exact
reduction shares it: ``trunk`` (the per-sample layers, forward and backward, which N
processes divide), ``head`` (the rest of the network and the loss, which every process
repeats on the whole batch) and ``update`` (the SGD step, which every process repeats) — the
inputs of the scaling model in BENCHMARKS.md.

Rank 0 prints medians; ``--json`` writes them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import jimunet as jn  # noqa: E402
from jimunet.distributed import BatchSync, GradientBuffer  # noqa: E402
from jimunet.parallel import split, synced_batch  # noqa: E402
from jimunet.random import batch_shard  # noqa: E402
from jimunet.app.recipes import MNISTConfig, build  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64, help="the global batch")
    ap.add_argument("--reduce-only", type=int, default=30, help="extra all-reduces timed alone")
    ap.add_argument("--threads", type=int, default=None, help="threads per rank (default: cores / ranks here)")
    ap.add_argument("--json", default=None, help="write rank 0's results here")
    ap.add_argument("--reduction", choices=("allreduce", "exact"), default="allreduce")
    ap.add_argument("--model", choices=("cnn", "resnet"), default="cnn", help="the recipe's network (default cnn)")
    ap.add_argument("--phases", action="store_true", help="time one process's trunk, head and update (no MPI)")
    args = ap.parse_args()
    if args.phases:
        return phases(args)
    if args.reduction == "exact":
        return exact(args)

    comm, threads = _start_mpi(args)
    model, loss_fn, opt, x, y = _problem(args)
    part = comm.shard(args.batch_size)
    m = part.stop - part.start
    buf = GradientBuffer(model.parameters())
    times = {k: [] for k in ("compute", "wait", "allreduce", "update")}
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        sync = BatchSync(comm, split(args.batch_size, comm.size), exact=False)  # BatchNorm's per-channel sums
        with synced_batch(sync):
            with batch_shard(part.start, part.stop, args.batch_size):
                logits = model.forward(x[part], training=True)
            loss_fn.forward(logits, y[part])
            g = loss_fn.backward()
            g *= g.dtype.type(m / args.batch_size)
            model.backward(g, input_grad=False)
        t1 = time.perf_counter()
        comm.barrier()
        t2 = time.perf_counter()
        comm.allreduce_(buf.flat)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t4 = time.perf_counter()
        if step >= args.warmup:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[k].append(v)
    alone = []
    for _ in range(args.reduce_only):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce_(buf.flat)
        alone.append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    med["allreduce_alone"] = float(np.median(alone)) * 1e3
    worst = _slowest(comm, med)
    if comm.rank == 0:
        result = {"ranks": comm.size, "threads_per_rank": threads, "global_batch": args.batch_size,
                  "grad_bytes": int(buf.nbytes), "steps": args.steps, "median_ms_rank0": med,
                  "median_ms_slowest_rank": worst,
                  "step_ms": sum(med[k] for k in ("compute", "wait", "allreduce", "update")),
                  "host": platform.node(), "cpus": os.cpu_count(), "numpy": np.__version__,
                  "loadavg_1min": os.getloadavg()[0]}
        print(f"{comm.size} rank(s) x {threads} thread(s), global batch {args.batch_size}, "
              f"{buf.nbytes / 1e6:.2f} MB of gradients, load average {result['loadavg_1min']:.1f}")
        for k in ("compute", "wait", "allreduce", "update", "allreduce_alone"):
            print(f"  {k:16s} {med[k]:8.2f} ms (slowest rank {result['median_ms_slowest_rank'][k]:8.2f} ms)")
        rate = args.batch_size / result["step_ms"] * 1e3
        print(f"  step             {result['step_ms']:8.2f} ms -> {rate:.0f} img/s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)


def _start_mpi(args):
    """The job's communicator and this rank's threads (default: the cores shared by the ranks here)."""
    comm = jn.distributed.init()
    threads = args.threads or max(1, (os.cpu_count() or 1) // comm.local_size)
    jn.set_num_threads(threads)
    return comm, threads


def _problem(args):
    """The recipe's model, loss and optimizer, and one random global batch."""
    model, loss_fn, opt, _ = build(MNISTConfig(model=args.model), train_size=55000)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, 28, 28, 1)).astype(np.float32)
    return model, loss_fn, opt, x, rng.integers(0, 10, args.batch_size)


def _slowest(comm, med):
    """Every rank's medians, the largest of each: what rank 0 shows as the slowest rank."""
    table = np.array([med[k] for k in sorted(med)], np.float64)
    comm.allreduce_(table, op="max")
    return dict(zip(sorted(med), table.tolist()))


def phases(args):
    if args.threads:
        jn.set_num_threads(args.threads)
    model, loss_fn, opt, x, y = _problem(args)
    k = model.per_sample_stages()
    times = {"trunk": [], "head": [], "update": []}
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        feats = model.forward(x, training=True, stages=slice(0, k))
        t1 = time.perf_counter()
        loss_fn.forward(model.forward(feats, training=True, stages=slice(k, None)), y)
        g = model.backward(loss_fn.backward(), stages=slice(k, None))
        t2 = time.perf_counter()
        model.backward(g, input_grad=False, stages=slice(0, k))
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad()
        t4 = time.perf_counter()
        if step >= args.warmup:
            times["trunk"].append((t1 - t0) + (t3 - t2))
            times["head"].append(t2 - t1)
            times["update"].append(t4 - t3)
    med = {key: float(np.median(v)) * 1e3 for key, v in times.items()}
    print(f"one process, {jn.get_num_threads()} thread(s), batch {args.batch_size}, first {k} layers per-sample, "
          f"load average {os.getloadavg()[0]:.1f}")
    for key, v in med.items():
        print(f"  {key:8s} {v:8.2f} ms")
    print(f"  step     {sum(med.values()):8.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"phases_ms": med, "threads": jn.get_num_threads(), "batch": args.batch_size}, f, indent=1)


def exact(args):
    from jimunet.training import Trainer
    comm, threads = _start_mpi(args)
    model, loss_fn, opt, x, y = _problem(args)
    trainer = Trainer(model, loss_fn, opt, batch_size=args.batch_size, comm=comm, reduction="exact",
                      progress=False, log=False)
    steps, comms = [], []
    for step in range(args.warmup + args.steps):
        comm.barrier()
        c0, t0 = trainer.comm_seconds, time.perf_counter()
        trainer.train_step(x, y)
        if step >= args.warmup:
            steps.append(time.perf_counter() - t0)
            comms.append(trainer.comm_seconds - c0)
    med = {"step": float(np.median(steps)) * 1e3, "communication": float(np.median(comms)) * 1e3,
           "compute": float(np.median(np.subtract(steps, comms))) * 1e3}
    worst = _slowest(comm, med)
    if comm.rank == 0:
        result = {"reduction": "exact", "ranks": comm.size, "threads_per_rank": threads,
                  "global_batch": args.batch_size, "steps": args.steps, "median_ms_rank0": med,
                  "median_ms_slowest_rank": worst, "host": platform.node(), "cpus": os.cpu_count(),
                  "numpy": np.__version__, "loadavg_1min": os.getloadavg()[0]}
        print(f"{comm.size} rank(s) x {threads} thread(s), exact reduction, global batch {args.batch_size}, "
              f"load average {result['loadavg_1min']:.1f}")
        for k in ("compute", "communication", "step"):
            print(f"  {k:16s} {med[k]:8.2f} ms (slowest rank {worst[k]:8.2f} ms)")
        print(f"  -> {args.batch_size / med['step'] * 1e3:.0f} img/s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
