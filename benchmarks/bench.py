"""Side-by-side speed and memory of jimunet, PyTorch and TensorFlow (CPU) on the TF MNIST sample model.

Each measurement runs in a fresh process (so peak RSS belongs to that task alone), and the
frameworks alternate, round after round, so drifting machine load hits all alike. Reports
images/s and peak RSS per task and the ratios jimunet/PyTorch and jimunet/TensorFlow per round
with their medians.

    python benchmarks/bench.py                 # 3 rounds, all tasks
    python benchmarks/bench.py --frameworks jimunet torch   # leave TensorFlow out
    python benchmarks/bench.py --rounds 5 --tasks train64 infer1000 --json out.json
    python benchmarks/bench.py --info          # only the machine line
    python benchmarks/bench.py --isa avx2      # every framework held to AVX2 kernels (no AVX-512)
    python benchmarks/bench.py --device cuda   # on an NVIDIA GPU: jimunet on CuPy vs PyTorch CUDA,
                                               # TF32 off in both (--tf32: on in both)

Speed depends on the machine far more than on anything else, so every run starts by printing
(and ``--json`` records) the CPU model and ISA, the BLAS library and the kernel OpenBLAS
picked for this CPU, and the NumPy, PyTorch and TensorFlow versions; quote them with any figure.

PyTorch is an optional benchmark dependency (``pip install -e '.[bench]'``). TensorFlow is an
optional third column (CPU only), included when ``import tensorflow`` works: ``pip install -e
'.[bench-tf]'`` (tensorflow-cpu==2.21.0), best in a virtual environment of its own, since it
pins its own NumPy and protobuf ranges.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its sibling modules, however it is loaded
from bench_steps import jimunet_step  # noqa: E402 (no NumPy: --isa still comes first)

TASKS = {  # name: (kind, batch, warm-up iterations, timed iterations)
    "train64": ("train", 64, 5, 60),
    "train256": ("train", 256, 2, 16),
    "infer1000": ("infer", 1000, 1, 8),
    "train512": ("train", 512, 3, 30),          # GPU tasks (--device cuda)
    "infer10000": ("infer", 10000, 2, 10),
    "cifar256": ("train", 256, 2, 6),           # the narrow ResNet-9 recipe (bench_cifar.py; jimunet
    "cifar-infer1000": ("infer", 1000, 1, 4),   # and PyTorch only): --tasks cifar256 cifar-infer1000
    "airbench1024": ("train", 1024, 1, 3),      # the CIFAR-10 recipe, airbench (bench_cifar.py):
    "airbench-infer1000": ("infer", 1000, 1, 4),  # --tasks airbench1024 airbench-infer1000
    "resnet128": ("train", 128, 3, 20),         # the --model resnet recipe, mnist_resnet (bench_cifar.py)
    "resnet-infer1000": ("infer", 1000, 1, 8),
}
# The recipe networks' tasks (jimunet and PyTorch only): task -> bench_cifar's network
RECIPE_TASKS = {"cifar256": "cifar", "cifar-infer1000": "cifar", "airbench1024": "airbench",
                "airbench-infer1000": "airbench", "resnet128": "resnet", "resnet-infer1000": "resnet"}
CPU_TASKS, GPU_TASKS = ["train64", "train256", "infer1000"], ["train64", "train512", "infer1000", "infer10000"]
#: ``--keep-freed-memory``: ``jimunet.allocator.GLIBC_TUNABLES``, spelled out because this process
#: must not load NumPy before ``--isa`` is set.
KEEP_FREED_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"
#: ``--isa avx2``: holds every framework's CPU kernels to AVX2, as a CPU without AVX-512 (the
#: Zen 3 of issue #9, for one) would run them. Set before any of them loads, in this process
#: and the workers; each variable is the library's own documented switch.
AVX2_ENV = {
    "OPENBLAS_CORETYPE": "Haswell",  # NumPy's OpenBLAS: jimunet's matrix products
    # NumPy's own AVX-512 loops, by NumPy 2's names, then NumPy 1's (NumPy 2.4 ignores names it lacks)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512_SKX AVX512_CLX AVX512_CNL",
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's kernels
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # MKL: PyTorch's matrix products
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN: PyTorch's and TensorFlow's convolutions
}
FRAMEWORKS = ("jimunet", "torch", "tensorflow")  # --frameworks; --channels-last adds "torch-cl"
TF_VERSION = "2.21.0"


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
        # On the CPU predict's own chunking (its default), as a user gets it; a GPU takes it whole.
        return _time(lambda: model.predict(x) if device == "cpu" else model.predict(x, batch_size=len(x)),
                     warm, iters, sync)
    loss_fn = jn.losses.SoftmaxCrossEntropy()
    dense = [p for layer in model.layers if isinstance(layer, jn.layers.Dense) for p in layer.parameters()]
    conv = [p for p in model.parameters() if all(p is not q for q in dense)]
    opt = jn.optim.SGD([{"params": conv}, {"params": dense, "weight_decay": 5e-4}], lr=0.01, momentum=0.9)
    return _time(jimunet_step(model, loss_fn, opt, x, y), warm, iters, sync)


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


def _tf_model(keras):
    """The sample model in Keras (NHWC, float32, Keras' default initialisers). The recipe adds
    5e-4 * l2_loss(w) = 5e-4 * sum(w²) / 2 for the dense weights and biases to the loss;
    Keras' L2(c) adds c * sum(w²), so c = 2.5e-4 gives the same gradient, 5e-4 * w, as the
    weight decay in the other two columns."""
    layers, l2 = keras.layers, keras.regularizers.L2(2.5e-4)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, 5, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Conv2D(64, 5, padding="same", activation="relu"), layers.MaxPooling2D(2),
        layers.Flatten(), layers.Dense(512, activation="relu", kernel_regularizer=l2, bias_regularizer=l2),
        layers.Dropout(0.5), layers.Dense(10, kernel_regularizer=l2, bias_regularizer=l2)])


def _run_tensorflow(kind, batch, warm, iters, threads, train="function", infer="function"):
    """Keras on TensorFlow's CPU path, as a TF user gets it, without XLA (Keras' default
    ``jit_compile="auto"`` is off on a machine without a GPU). Training: one SGD step per
    iteration (dropout on) as a custom ``tf.function`` train step with a GradientTape;
    inference: the forward pass with ``training=False`` as a ``tf.function``. These were the
    faster of the two usual ways on the project's machine (2026-11-29, 2 alternating rounds
    each, other jobs running): the step 1,261-1,264 img/s against ``model.train_on_batch``'s
    1,223-1,228 at batch 64, the forward 3,231-3,924 against ``predict_on_batch``'s
    2,872-3,524 at batch 1000. ``train="train_on_batch"`` and ``infer="predict_on_batch"``
    run those, for A/B checks.
    (The same step with XLA, ``jit_compile=True``, ran at 428 img/s in one run, far slower.)"""
    os.environ["KERAS_BACKEND"] = "tensorflow"  # tf.keras is Keras 3: make sure it runs on TF
    import tensorflow as tf
    keras = tf.keras
    # as the torch column: intra-op threads = --threads (os.cpu_count() by default, which is
    # also TF's own default); the inter-op pool keeps TF's default, as torch's does
    tf.config.threading.set_intra_op_parallelism_threads(threads or os.cpu_count())
    keras.utils.set_random_seed(0)
    x, y = _data(batch)
    x, y = tf.constant(x), tf.constant(y)  # already in the framework's tensors, as for torch
    model = _tf_model(keras)
    if kind == "infer":
        if infer == "predict_on_batch":
            return _time(lambda: model.predict_on_batch(x), warm, iters)
        forward = tf.function(lambda: model(x, training=False))
        return _time(forward, warm, iters)  # eager CPU execution is synchronous: no sync needed
    opt = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if train == "train_on_batch":
        model.compile(optimizer=opt, loss=loss_fn, jit_compile=False)
        return _time(lambda: model.train_on_batch(x, y), warm, iters)

    @tf.function(jit_compile=False)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss
    return _time(step, warm, iters)


def worker(framework, task, threads, device="cpu"):
    kind, batch, warm, iters = TASKS[task]
    if task in RECIPE_TASKS:
        run = _bench_cifar().run_jimunet if framework == "jimunet" else _bench_cifar().run_torch
        seconds = run(kind, batch, warm, iters, threads, _time, net=RECIPE_TASKS[task])
    elif framework == "jimunet":
        seconds = _run_jimunet(kind, batch, warm, iters, threads, device)
    elif framework == "tensorflow":
        seconds = _run_tensorflow(kind, batch, warm, iters, threads)
    else:
        seconds = _run_torch(kind, batch, warm, iters, threads, channels_last=framework == "torch-cl", device=device)
    print(json.dumps({"images_per_s": batch * iters / seconds, "peak_rss_mb": peak_rss_mb()}))


def _bench_cifar():
    """benchmarks/bench_cifar.py, imported only in a worker: it loads NumPy, which ``--isa`` must precede."""
    import bench_cifar
    return bench_cifar


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB. On Linux from ``VmHWM`` in /proc/self/status:
    ``getrusage``'s ``ru_maxrss`` would not do, because Linux carries the high-water mark
    over ``fork``/``exec``, so a worker's ru_maxrss is never below the parent's peak (the parent
    has imported PyTorch: ~270 MB, more than jimunet's own peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB elsewhere


def _measure(framework, task, threads, device="cpu"):
    out = subprocess.run([sys.executable, __file__, "--worker", framework, task, "--threads", str(threads),
                          "--device", device], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{framework} {task} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


_TF_PROBE = """
import os
os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf
try:  # whether TensorFlow's oneDNN kernels are on (TF_ENABLE_ONEDNN_OPTS; default on x86 Linux)
    from tensorflow.python.util._pywrap_util_port import IsMklEnabled
    onednn = "on" if IsMklEnabled() else "off"
except Exception:
    onednn = "?"
print(tf.__version__, onednn)
"""


@functools.lru_cache(maxsize=None)
def tensorflow_status() -> tuple:
    """``(version, oneDNN "on"/"off", None)`` if ``import tensorflow`` works in this Python,
    else ``(None, None, why)``. Asked in a child process: importing TensorFlow takes seconds
    and a lot of memory, and a broken install can abort the process that imports it."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        out = subprocess.run([sys.executable, "-c", _TF_PROBE], capture_output=True, text=True, env=env, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, None, str(e)
    if out.returncode == 0 and out.stdout.split():
        version, onednn = (out.stdout.split() + ["?"])[:2]
        return version, onednn, None
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    return None, None, lines[-1] if lines else f"exit status {out.returncode}"


def _tf_skip_message(why) -> str:
    return (f"TensorFlow column skipped: `import tensorflow` failed ({why}); to include it: "
            f"pip install tensorflow-cpu=={TF_VERSION} (or pip install -e '.[bench-tf]'), best in a venv of its own")


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
    versions of NumPy, jimunet, PyTorch and TensorFlow, the CPU kernels PyTorch dispatches to
    and whether TensorFlow's oneDNN kernels are on (they double its speed on a modern x86)."""
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
    capped = {k: os.environ[k] for k in AVX2_ENV if k != "OPENBLAS_CORETYPE" and os.environ.get(k)}
    if capped:
        info["kernel_caps"] = capped
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
    version, onednn, _ = tensorflow_status()
    info["tensorflow"] = version or "not installed"
    if version:
        info["tensorflow_onednn"] = onednn
    if os.environ.get("GLIBC_TUNABLES"):
        info["GLIBC_TUNABLES"] = os.environ["GLIBC_TUNABLES"]
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS"):
        info["TF_ENABLE_ONEDNN_OPTS"] = os.environ["TF_ENABLE_ONEDNN_OPTS"]
    return info


def describe_machine(info: dict) -> str:
    """One line, e.g. ``AMD EPYC (family/model 25/17), AVX-512, 2 CPUs | NumPy 2.4.6, openblas
    0.3.31 kernel SkylakeX | jimunet 0.1.0, PyTorch 2.13.0+cpu (AVX512 kernels), TensorFlow
    2.21.0 (oneDNN on) | Python 3.11.7``."""
    line = (f"{info['cpu']} (family/model {info['cpu_family_model']}), {info['isa']}, {info['cpus']} CPUs | "
            f"NumPy {info['numpy']}, {info['blas']} {info['blas_version']} kernel {info['blas_kernel']}")
    if "OPENBLAS_CORETYPE" in info:
        line += f" (OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']})"
    if "GLIBC_TUNABLES" in info:
        line += f" (GLIBC_TUNABLES={info['GLIBC_TUNABLES']})"
    line += f" | jimunet {info.get('jimunet', 'n/a')}, PyTorch {info['torch']}"
    if "torch_cpu_capability" in info:
        line += f" ({info['torch_cpu_capability']} kernels)"
    line += f", TensorFlow {info.get('tensorflow', 'n/a')}"
    if "tensorflow_onednn" in info:
        line += f" (oneDNN {info['tensorflow_onednn']})"
    if "TF_ENABLE_ONEDNN_OPTS" in info:
        line += f" (TF_ENABLE_ONEDNN_OPTS={info['TF_ENABLE_ONEDNN_OPTS']})"
    if "kernel_caps" in info:
        line += " | " + " ".join(f"{k}={v!r}" for k, v in info["kernel_caps"].items())
    return line + f" | Python {info['python']}"


def choose_frameworks(asked, device, channels_last, tf_status=tensorflow_status):
    """The frameworks to time, jimunet first: ``asked`` (``--frameworks``), or by default
    jimunet, torch and, on the CPU, tensorflow if it imports (else one line says it is skipped
    and how to get it). Raises SystemExit with the reason for a list that cannot run."""
    wanted = list(dict.fromkeys(asked)) if asked else ["jimunet", "torch", "tensorflow"]
    if "jimunet" not in wanted:
        raise SystemExit("--frameworks must include jimunet: the ratios are jimunet / each other framework")
    if "tensorflow" in wanted:
        why = None
        if device != "cpu":
            why = "the TensorFlow column runs on the CPU only (tensorflow-cpu)"
        else:
            why = tf_status()[2]
            why = why and _tf_skip_message(why)
        if why:
            if asked:
                raise SystemExit(why)
            print(why)
            wanted.remove("tensorflow")
    if "torch" in wanted:
        try:
            import torch  # noqa: F401
        except ImportError:
            raise SystemExit("the PyTorch column needs torch: pip install -e '.[bench]' (torch==2.13.0)")
    if channels_last:
        if "torch" not in wanted:
            raise SystemExit("--channels-last times PyTorch a second way: include torch in --frameworks")
        wanted.append("torch-cl")
    return ["jimunet"] + [f for f in wanted if f != "jimunet"]


def summarize(results: dict, frameworks: list) -> dict:
    """Per task: each framework's median images/s and peak MB, and for every other framework
    the per-round ratios jimunet / it (speed and memory) and their medians. The PyTorch ratios
    also keep their old flat names (``speed_ratio``, ``memory_ratio``, ``torch_img_s``)."""
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    summary = {}
    for task, runs in results.items():
        s = {}
        for fw in frameworks:
            s[f"{fw}_img_s"], s[f"{fw}_peak_mb"] = med(runs[fw], "images_per_s"), med(runs[fw], "peak_rss_mb")
        s["vs"] = {}
        for fw in frameworks[1:]:
            speed = [a["images_per_s"] / b["images_per_s"] for a, b in zip(runs["jimunet"], runs[fw])]
            mem = [a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in zip(runs["jimunet"], runs[fw])]
            s["vs"][fw] = {"speed_ratio": statistics.median(speed), "memory_ratio": statistics.median(mem),
                           "speed_ratios": speed, "memory_ratios": mem}
        if "torch" in s["vs"]:
            s["speed_ratio"], s["memory_ratio"] = s["vs"]["torch"]["speed_ratio"], s["vs"]["torch"]["memory_ratio"]
        if "torch-cl" in frameworks:
            s["torch_channels_last_img_s"] = s["torch-cl_img_s"]
        summary[task] = s
    return summary


LABELS = {"jimunet": "jimunet", "torch": "torch", "torch-cl": "torch-cl", "tensorflow": "TF"}


def format_summary(summary: dict, frameworks: list) -> str:
    """Two tables, speed (images/s) and peak RSS (MB): each framework's median and jimunet /
    each other framework (the median of the per-round ratios), the speed ratios of every round
    below each task."""
    others, names = frameworks[1:], [LABELS[fw] for fw in frameworks]
    head = f"{'task':10s}" + "".join(f" {n:>9s}" for n in names) + "".join(f" {'/' + n:>9s}" for n in names[1:])
    lines = []
    for title, key, ratio in (("images/s", "img_s", "speed_ratio"), ("peak RSS, MB", "peak_mb", "memory_ratio")):
        lines += ["", f"{title}: medians over rounds; /X = jimunet / X, per round, then median", head]
        for task, s in summary.items():
            lines.append(f"{task:10s}" + "".join(f" {s[f'{fw}_{key}']:9.0f}" for fw in frameworks)
                         + "".join(f" {s['vs'][fw][ratio]:9.2f}" for fw in others))
            if key == "img_s":
                for fw in others:
                    rounds = " ".join(f"{r:.2f}" for r in s["vs"][fw]["speed_ratios"])
                    lines.append(f"{'':10s}   jimunet/{LABELS[fw]} by round: {rounds}")
    return "\n".join(lines[1:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS),
                    help=f"default: {' '.join(CPU_TASKS)} (CPU), {' '.join(GPU_TASKS)} (GPU)")
    ap.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=None,
                    help="default: jimunet torch, and tensorflow when it imports (CPU only)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: jimunet on CuPy against PyTorch CUDA")
    ap.add_argument("--tf32", action="store_true", help="GPU: allow TF32 matrix products in both frameworks")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every framework")
    ap.add_argument("--channels-last", action="store_true", help="also time PyTorch with channels_last")
    ap.add_argument("--json", help="also write the results here (with the machine description)")
    ap.add_argument("--info", action="store_true", help="only print the machine description and exit")
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="avx2: hold every framework to its AVX2 kernels (a CPU without AVX-512)")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="every framework's workers with glibc's malloc keeping freed memory for reuse, as "
                         "jimunet train runs (jimunet.keep_freed_memory; here through GLIBC_TUNABLES)")
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "TASK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.isa == "avx2":
        loaded = [m for m in ("numpy", "torch", "tensorflow") if m in sys.modules]
        if loaded:  # their kernels were chosen at import
            raise SystemExit(f"--isa avx2 must be set before {', '.join(loaded)} is imported: "
                             "run bench.py as a script")
        os.environ.update(AVX2_ENV)  # the workers inherit it
    if args.keep_freed_memory:
        os.environ["GLIBC_TUNABLES"] = KEEP_FREED_MEMORY  # read by each worker's C library at its start
    if args.tf32:
        os.environ["CUPY_TF32"] = "1"  # read by CuPy at import, and passed on to the workers
    if args.worker:
        return worker(args.worker[0], args.worker[1], args.threads, args.device)
    if args.tasks is None:
        args.tasks = CPU_TASKS if args.device == "cpu" else GPU_TASKS
    if args.info:
        print("machine:", describe_machine(machine_info()))
        return
    frameworks = choose_frameworks(args.frameworks, args.device, args.channels_last)
    if set(args.tasks) & set(RECIPE_TASKS) and (set(frameworks) - {"jimunet", "torch"} or args.device != "cpu"):
        raise SystemExit("the recipe tasks (cifar, airbench, resnet) run on the CPU in jimunet and PyTorch only: "
                         "add --frameworks jimunet torch")
    info = machine_info()
    print("machine:", describe_machine(info), f"| threads {args.threads}")
    if args.device != "cpu":
        name = ""
        if "torch" in frameworks:
            import torch
            name = f" ({torch.cuda.get_device_name()})"
        print(f"device: {args.device}{name}, TF32 {'on' if args.tf32 else 'off'}; peak MB below is host memory (RSS)")
    results = {t: {f: [] for f in frameworks} for t in args.tasks}
    for r in range(args.rounds):
        for task in args.tasks:
            for fw in (frameworks if r % 2 == 0 else frameworks[::-1]):  # alternate who goes first
                results[task][fw].append(_measure(fw, task, args.threads, args.device))
            j = results[task]["jimunet"][-1]
            line = f"round {r + 1} {task:9s} jimunet {j['images_per_s']:7.0f} img/s {j['peak_rss_mb']:6.0f} MB"
            for fw in frameworks[1:]:
                o = results[task][fw][-1]
                line += (f" | {fw} {o['images_per_s']:7.0f} img/s {o['peak_rss_mb']:6.0f} MB"
                         f" ratio {j['images_per_s'] / o['images_per_s']:.2f}")
            print(line, flush=True)
    summary = summarize(results, frameworks)
    print("\n" + format_summary(summary, frameworks))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": describe_machine(info), "versions": info, "threads": args.threads, "rounds": args.rounds,
                       "device": args.device, "tf32": args.tf32, "frameworks": frameworks,
                       "raw": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
