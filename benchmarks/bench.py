"""Side-by-side speed and memory of jimunet and PyTorch (CPU) on the TF MNIST sample model.

Each measurement runs in a fresh process (so peak RSS belongs to that task alone), and the
two frameworks alternate, round after round, so drifting machine load hits both alike.
Reports images/s and peak RSS per task and the jimunet/PyTorch ratio per round with its median.

    python benchmarks/bench.py                 # 3 rounds, all tasks
    python benchmarks/bench.py --rounds 5 --tasks train64 infer1000 --json out.json
    python benchmarks/bench.py --info          # only the machine line
    python benchmarks/bench.py --device cuda   # on an NVIDIA GPU: jimunet on CuPy vs PyTorch CUDA,
                                               # TF32 off in both (--tf32: on in both)

Speed depends on the machine far more than on anything else, so every run starts by printing
(and ``--json`` records) the CPU model and ISA, the BLAS library and the kernel OpenBLAS
picked for this CPU, and the NumPy and PyTorch versions; quote them with any figure.

PyTorch is an optional benchmark dependency (``pip install -e '.[bench]'``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

TASKS = {  # name: (kind, batch, warm-up iterations, timed iterations)
    "train64": ("train", 64, 5, 60),
    "train256": ("train", 256, 2, 16),
    "infer1000": ("infer", 1000, 1, 8),
    "train512": ("train", 512, 3, 30),          # GPU tasks (--device cuda)
    "infer10000": ("infer", 10000, 2, 10),
}
CPU_TASKS, GPU_TASKS = ["train64", "train256", "infer1000"], ["train64", "train512", "infer1000", "infer10000"]
FRAMEWORKS = ("jimunet", "torch")


def _time(step, warm, iters, sync=lambda: None):
    """Seconds for ``iters`` calls of ``step`` after ``warm`` untimed ones (``sync`` waits
    for a GPU to finish the work queued so far)."""
    for _ in range(warm):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return time.perf_counter() - t


def _data(batch):
    import numpy as np
    rng = np.random.default_rng(0)
    x = ((rng.integers(0, 256, (batch, 28, 28, 1)) - 127.5) / 255).astype(np.float32)
    return x, rng.integers(0, 10, batch).astype(np.int64)


def _run_jimunet(kind, batch, warm, iters, threads, device="cpu"):
    import jimunet as jn
    if threads and hasattr(jn, "set_num_threads"):
        jn.set_num_threads(threads)
    x, y = _data(batch)
    model = jn.models.mnist_cnn(rng=0)
    sync = lambda: None  # noqa: E731
    if device != "cpu":
        import cupy
        model.to(device)
        x, y = jn.asarray(x, device=device), jn.asarray(y, device=device)
        sync = cupy.cuda.get_current_stream().synchronize
    if kind == "infer":
        return _time(lambda: model.predict(x, batch_size=len(x) if device != "cpu" else 100), warm, iters, sync)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    dense = [p for layer in model.layers if isinstance(layer, jn.layers.Dense) for p in layer.parameters()]
    conv = [p for p in model.parameters() if all(p is not q for q in dense)]
    opt = jn.optim.SGD([{"params": conv}, {"params": dense, "weight_decay": 5e-4}], lr=0.01, momentum=0.9)

    def step():
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        opt.step()
        opt.zero_grad()
    return _time(step, warm, iters, sync)


def _torch_model(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 10))


def _run_torch(kind, batch, warm, iters, threads, channels_last=False, device="cpu"):
    import torch
    torch.set_num_threads(threads or os.cpu_count())
    torch.manual_seed(0)
    x, y = _data(batch)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y)
    model = _torch_model(torch)
    sync = lambda: None  # noqa: E731
    if device != "cpu":
        tf32 = os.environ.get("CUPY_TF32") == "1"  # the same setting for both frameworks
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        model, x, y = model.to(device), x.to(device), y.to(device)
        sync = torch.cuda.synchronize
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if kind == "infer":
        model.eval()
        with torch.no_grad():
            return _time(lambda: model(x), warm, iters, sync)
    model.train()
    dense = [p for m in model if isinstance(m, torch.nn.Linear) for p in m.parameters()]
    conv = [p for m in model if isinstance(m, torch.nn.Conv2d) for p in m.parameters()]
    opt = torch.optim.SGD([{"params": conv}, {"params": dense, "weight_decay": 5e-4}], lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return _time(step, warm, iters, sync)


def worker(framework, task, threads, device="cpu"):
    kind, batch, warm, iters = TASKS[task]
    if framework == "jimunet":
        seconds = _run_jimunet(kind, batch, warm, iters, threads, device)
    else:
        seconds = _run_torch(kind, batch, warm, iters, threads, channels_last=framework == "torch-cl", device=device)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"images_per_s": batch * iters / seconds, "peak_rss_mb": peak_mb}))


def _measure(framework, task, threads, device="cpu"):
    out = subprocess.run([sys.executable, __file__, "--worker", framework, task, "--threads", str(threads),
                          "--device", device], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{framework} {task} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpuinfo() -> dict:
    """``model name``, ``cpu family``, ``model`` and ``flags`` of the first CPU (Linux), else {}."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines()) if k.strip()}


def _isa_level(flags: set) -> str:
    """The widest x86 vector extension the CPU reports (what BLAS kernels are chosen by)."""
    for name, flag in (("AVX-512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE4.2", "sse4_2")):
        if flag in flags:
            return name
    return "n/a"


def machine_info() -> dict:
    """Everything a speed figure depends on: CPU model and ISA, the BLAS NumPy calls and the
    kernel it picked for this CPU (OpenBLAS names it, e.g. "SkylakeX" or "Haswell"), the
    versions of NumPy, jimunet and PyTorch and the CPU kernels PyTorch dispatches to."""
    import numpy
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    if not flags:  # not Linux: ask NumPy which features it detected
        try:
            from numpy._core._multiarray_umath import __cpu_features__
            flags = {k.lower() for k, v in __cpu_features__.items() if v}  # "AVX512F", "AVX2", "SSE42"
            flags |= {"sse4_2"} if "sse42" in flags else set()
        except ImportError:
            pass
    info = {"cpu": cpu.get("model name") or platform.processor() or platform.machine(),
            "cpu_family_model": f"{cpu['cpu family']}/{cpu['model']}" if "cpu family" in cpu else "n/a",
            "isa": _isa_level(flags), "cpus": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "numpy": numpy.__version__}
    try:
        from threadpoolctl import threadpool_info
        blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        blas = []
    if blas:
        b = blas[0]
        info.update(blas=b.get("internal_api", "n/a"), blas_version=b.get("version") or "n/a",
                    blas_kernel=b.get("architecture") or "n/a")
    else:
        info.update(blas="n/a", blas_version="n/a", blas_kernel="n/a")
    if os.environ.get("OPENBLAS_CORETYPE"):
        info["OPENBLAS_CORETYPE"] = os.environ["OPENBLAS_CORETYPE"]
    try:
        import jimunet
        info["jimunet"] = jimunet.__version__
    except ImportError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        info["torch"] = "not installed"
    return info


def describe_machine(info: dict) -> str:
    """One line, e.g. ``AMD EPYC (family/model 25/17), AVX-512, 2 CPUs | NumPy 2.4.6, openblas
    0.3.31 kernel SkylakeX | ...``."""
    line = (f"{info['cpu']} (family/model {info['cpu_family_model']}), {info['isa']}, {info['cpus']} CPUs | "
            f"NumPy {info['numpy']}, {info['blas']} {info['blas_version']} kernel {info['blas_kernel']}")
    if "OPENBLAS_CORETYPE" in info:
        line += f" (OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']})"
    line += f" | jimunet {info.get('jimunet', 'n/a')}, PyTorch {info['torch']}"
    if "torch_cpu_capability" in info:
        line += f" ({info['torch_cpu_capability']} kernels)"
    return line + f" | Python {info['python']}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS),
                    help=f"default: {' '.join(CPU_TASKS)} (CPU), {' '.join(GPU_TASKS)} (GPU)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: jimunet on CuPy against PyTorch CUDA")
    ap.add_argument("--tf32", action="store_true", help="GPU: allow TF32 matrix products in both frameworks")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both frameworks")
    ap.add_argument("--channels-last", action="store_true", help="also time PyTorch with channels_last")
    ap.add_argument("--json", help="also write the results here (with the machine description)")
    ap.add_argument("--info", action="store_true", help="only print the machine description and exit")
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "TASK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"  # read by CuPy at import, and passed on to the workers
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.threads, args.device)
    if args.tasks is None:
        args.tasks = CPU_TASKS if args.device == "cpu" else GPU_TASKS
    if args.info:
        print("machine:", describe_machine(machine_info()))
        return
    try:
        import torch
    except ImportError:
        raise SystemExit("the benchmark compares against PyTorch: pip install -e '.[bench]' (torch==2.13.0)")
    frameworks = ["jimunet", "torch"] + (["torch-cl"] if args.channels_last else [])
    info = machine_info()
    print("machine:", describe_machine(info), f"| threads {args.threads}")
    if args.device != "cpu":
        print(f"device: {args.device} ({torch.cuda.get_device_name()}), TF32 {'on' if args.tf32 else 'off'}; "
              "peak MB below is host memory (RSS)")
    results = {t: {f: [] for f in frameworks} for t in args.tasks}
    for r in range(args.rounds):
        for task in args.tasks:
            for fw in (frameworks if r % 2 == 0 else frameworks[::-1]):  # alternate who goes first
                results[task][fw].append(_measure(fw, task, args.threads, args.device))
            j, t = results[task]["jimunet"][-1], results[task]["torch"][-1]
            print(f"round {r + 1} {task:9s} jimunet {j['images_per_s']:7.0f} img/s {j['peak_rss_mb']:6.0f} MB | "
                  f"torch {t['images_per_s']:7.0f} img/s {t['peak_rss_mb']:6.0f} MB | "
                  f"speed ratio {j['images_per_s'] / t['images_per_s']:.2f}", flush=True)
    print("\nmedians over rounds (ratio = jimunet / PyTorch, per round, then median)")
    print(f"{'task':10s} {'jimunet img/s':>14s} {'torch img/s':>12s} {'speed ratio':>12s} "
          f"{'jimunet MB':>11s} {'torch MB':>9s} {'memory ratio':>13s}")
    summary = {}
    for task in args.tasks:
        j, t = results[task]["jimunet"], results[task]["torch"]
        speed = statistics.median(a["images_per_s"] / b["images_per_s"] for a, b in zip(j, t))
        mem = statistics.median(a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in zip(j, t))
        med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
        summary[task] = {"jimunet_img_s": med(j, "images_per_s"), "torch_img_s": med(t, "images_per_s"),
                         "speed_ratio": speed, "jimunet_peak_mb": med(j, "peak_rss_mb"),
                         "torch_peak_mb": med(t, "peak_rss_mb"), "memory_ratio": mem}
        if "torch-cl" in results[task]:
            summary[task]["torch_channels_last_img_s"] = med(results[task]["torch-cl"], "images_per_s")
        s = summary[task]
        print(f"{task:10s} {s['jimunet_img_s']:14.0f} {s['torch_img_s']:12.0f} {speed:12.2f} "
              f"{s['jimunet_peak_mb']:11.0f} {s['torch_peak_mb']:9.0f} {mem:13.2f}")
        if "torch_channels_last_img_s" in s:
            print(f"{'':10s} torch channels_last: {s['torch_channels_last_img_s']:.0f} img/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe_machine(info), "versions": info, "threads": args.threads, "rounds": args.rounds,
                       "device": args.device, "tf32": args.tf32,
                       "raw": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
