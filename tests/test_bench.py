"""benchmarks/bench.py without running a benchmark: which frameworks it times (TensorFlow is
optional, and must not break anything when it does not import), the ratios it reports, and
that a worker's peak memory is its own. None of these needs TensorFlow."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
spec = importlib.util.spec_from_file_location("bench", BENCH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

TF_OK = lambda: ("2.21.0", "on", None)  # noqa: E731
TF_MISSING = lambda: (None, None, "ModuleNotFoundError: No module named 'tensorflow'")  # noqa: E731


@pytest.fixture
def no_tensorflow(tmp_path, monkeypatch):
    """Make ``import tensorflow`` fail in child processes, whether or not it is installed."""
    (tmp_path / "tensorflow.py").write_text("raise ImportError('tensorflow hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    bench.tensorflow_status.cache_clear()
    yield
    bench.tensorflow_status.cache_clear()


def test_tensorflow_status_reports_a_failed_import(no_tensorflow):
    version, onednn, why = bench.tensorflow_status()
    assert version is None and onednn is None
    assert "tensorflow hidden by the test" in why


def test_default_frameworks_skip_tensorflow_with_one_line_saying_how(capsys):
    assert bench.choose_frameworks(None, "cpu", False, TF_MISSING) == ["jimunet", "torch"]
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "TensorFlow column skipped" in out[0] and "pip install tensorflow-cpu==2.21.0" in out[0]


def test_default_frameworks_include_tensorflow_when_it_imports(capsys):
    assert bench.choose_frameworks(None, "cpu", False, TF_OK) == ["jimunet", "torch", "tensorflow"]
    assert capsys.readouterr().out == ""
    # the TensorFlow column is CPU only: left out on a GPU run
    assert bench.choose_frameworks(None, "cuda", False, TF_OK) == ["jimunet", "torch"]


def test_asked_frameworks():
    assert bench.choose_frameworks(["tensorflow", "jimunet"], "cpu", False, TF_OK) == ["jimunet", "tensorflow"]
    assert bench.choose_frameworks(["jimunet", "torch"], "cpu", True, TF_MISSING) == ["jimunet", "torch", "torch-cl"]
    with pytest.raises(SystemExit, match="pip install tensorflow-cpu==2.21.0"):
        bench.choose_frameworks(["jimunet", "tensorflow"], "cpu", False, TF_MISSING)
    with pytest.raises(SystemExit, match="must include jimunet"):
        bench.choose_frameworks(["torch", "tensorflow"], "cpu", False, TF_OK)
    with pytest.raises(SystemExit, match="include torch"):
        bench.choose_frameworks(["jimunet"], "cpu", True, TF_OK)


def test_frameworks_option_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--frameworks", "jimunet", "jax"])
    assert "invalid choice: 'jax'" in capsys.readouterr().err


def _rows(rates, mbs):
    return [{"images_per_s": r, "peak_rss_mb": m} for r, m in zip(rates, mbs)]


def test_summary_has_per_round_ratios_and_medians_against_each_framework():
    frameworks = ["jimunet", "torch", "tensorflow"]
    results = {"train64": {"jimunet": _rows([100, 200, 300], [50, 50, 60]),
                           "torch": _rows([100, 400, 100], [100, 100, 100]),
                           "tensorflow": _rows([50, 100, 600], [200, 250, 200])}}
    s = bench.summarize(results, frameworks)["train64"]
    assert s["vs"]["torch"]["speed_ratios"] == [1.0, 0.5, 3.0]
    assert s["vs"]["torch"]["speed_ratio"] == 1.0
    assert s["vs"]["tensorflow"]["speed_ratios"] == [2.0, 2.0, 0.5]
    assert s["vs"]["tensorflow"]["speed_ratio"] == 2.0
    assert s["vs"]["tensorflow"]["memory_ratios"] == [0.25, 0.2, 0.3]
    assert s["vs"]["tensorflow"]["memory_ratio"] == 0.25
    assert (s["jimunet_img_s"], s["torch_img_s"], s["tensorflow_img_s"]) == (200, 100, 100)
    assert (s["jimunet_peak_mb"], s["tensorflow_peak_mb"]) == (50, 200)
    # the PyTorch ratios keep the names they had before the TensorFlow column
    assert (s["speed_ratio"], s["memory_ratio"]) == (1.0, 0.5)
    table = bench.format_summary({"train64": s}, frameworks)
    assert "/TF" in table and "/torch" in table
    assert "jimunet/TF by round: 2.00 2.00 0.50" in table


def test_summary_without_tensorflow_has_no_tensorflow_entries():
    results = {"infer1000": {"jimunet": _rows([300], [80]), "torch": _rows([200], [160])}}
    s = bench.summarize(results, ["jimunet", "torch"])["infer1000"]
    assert set(s["vs"]) == {"torch"} and s["speed_ratio"] == 1.5 and s["memory_ratio"] == 0.5
    assert not any("tensorflow" in k for k in s)
    assert "TF" not in bench.format_summary({"infer1000": s}, ["jimunet", "torch"])


def test_info_line_says_tensorflow_is_not_installed(no_tensorflow, capsys):
    bench.main(["--info"])
    out = capsys.readouterr().out
    assert out.startswith("machine:") and "TensorFlow not installed" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is in Linux's /proc")
def test_worker_peak_memory_is_its_own_not_the_parents():
    # Linux carries ru_maxrss over fork/exec: a child would report at least this process's peak
    big = np.ones(300 * 2**20 // 8)  # 300 MB, touched
    out = subprocess.run([sys.executable, "-c", f"import runpy; print(runpy.run_path({str(BENCH)!r})['peak_rss_mb']())"],
                         capture_output=True, text=True, check=True)
    child_mb = float(out.stdout)
    del big
    assert 1 < child_mb < 150, child_mb


def test_isa_avx2_holds_every_framework_to_avx2_and_says_so(no_tensorflow):
    out = subprocess.run([sys.executable, str(BENCH), "--isa", "avx2", "--info"], capture_output=True, text=True,
                         check=True).stdout
    assert "kernel Haswell (OPENBLAS_CORETYPE=Haswell)" in out  # what OpenBLAS really picked
    assert "PyTorch" in out and "(AVX2 kernels)" in out  # what PyTorch reports it runs
    for name, value in bench.AVX2_ENV.items():
        assert f"{name}={value}" in out or f"{name}={value!r}" in out


def test_keep_freed_memory_is_jimunets_setting_given_to_every_worker(no_tensorflow, monkeypatch):
    from jimunet.allocator import GLIBC_TUNABLES
    assert bench.KEEP_FREED_MEMORY == GLIBC_TUNABLES
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    out = subprocess.run([sys.executable, str(BENCH), "--keep-freed-memory", "--info"], capture_output=True,
                         text=True, check=True).stdout
    assert f"(GLIBC_TUNABLES={GLIBC_TUNABLES})" in out


def test_isa_avx2_refused_once_the_kernels_are_chosen():
    assert "numpy" in sys.modules  # this process chose NumPy's kernels at import
    with pytest.raises(SystemExit, match="before numpy"):
        bench.main(["--isa", "avx2", "--info"])


@pytest.mark.parametrize("task", list(bench.RECIPE_TASKS))
@pytest.mark.parametrize("framework", ["jimunet", "torch"])
def test_recipe_tasks_run_both_frameworks(task, framework, monkeypatch):
    """The cifar, airbench and resnet tasks time their recipe's step (shrunk here to a batch of 4, one timed call)."""
    pytest.importorskip("torch")
    kind = bench.TASKS[task][0]
    monkeypatch.setitem(bench.TASKS, task, (kind, 4, 0, 1))
    calls = []

    def timer(step, warm, iters):
        calls.append((warm, iters))
        step()
        return 1.0
    run = bench._bench_cifar().run_jimunet if framework == "jimunet" else bench._bench_cifar().run_torch
    assert run(kind, 4, 0, 1, 1, timer, net=bench.RECIPE_TASKS[task]) == 1.0 and calls == [(0, 1)]


def test_cifar_tasks_refuse_tensorflow(monkeypatch):
    monkeypatch.setattr(bench, "choose_frameworks", lambda *a: ["jimunet", "tensorflow"])
    with pytest.raises(SystemExit, match="recipe tasks .* run on the CPU in jimunet and PyTorch only"):
        bench.main(["--tasks", "cifar256", "--frameworks", "jimunet", "tensorflow", "--rounds", "1"])


def test_the_airbench_tasks_time_the_recipes_network(monkeypatch):
    """GELU in both frameworks, as ``CIFAR10_DEFAULTS`` has it."""
    pytest.importorskip("torch")
    import jimunet as jn
    cifar = bench._bench_cifar()
    made = []
    real_net, real_model = cifar.airbench_torch.build_net, jn.models.cifar_airbench
    monkeypatch.setattr(cifar.airbench_torch, "build_net", lambda **k: made.append(("torch", k)) or real_net(**k))
    monkeypatch.setattr(jn.models, "cifar_airbench",
                        lambda **k: made.append(("jimunet", k["activation"])) or real_model(**k))
    timer = lambda step, warm, iters: 1.0  # noqa: E731
    cifar.run_jimunet("infer", 2, 0, 1, 1, timer, net="airbench")
    cifar.run_torch("infer", 2, 0, 1, 1, timer, net="airbench")
    assert made == [("jimunet", "gelu"), ("torch", {"activation": "gelu"})]
