"""benchmarks/ab_step.py: alternating A/B of a training step between two source trees."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "benchmarks" / "ab_step.py"
SRC = str(ROOT / "src")
TINY = ["--model", "mnist_cnn", "--batch", "4", "--threads", "1", "--warm", "0", "--iters", "1"]


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          check=True, timeout=300).stdout


def test_ab_rounds_alternate_and_report_load_ratio_and_cpu_time():
    out = _run(SRC, SRC, "--rounds", "2", *TINY)
    lines = out.splitlines()
    assert [ln.split(":")[0] for ln in lines[:2]] == ["round 1", "round 2"]
    assert all("load" in ln and "B/A" in ln and "CPU/step" in ln for ln in lines[:2])
    assert "B/A median" in lines[2] and "CPU ms/step medians" in lines[2]


def test_profile_names_each_layer_class_and_phase():
    out = _run(SRC, SRC, "--profile", *TINY[2:], "--model", "mnist_resnet")  # with BatchNorm's fused calls
    assert out.count("Conv2D           forward ") == 2 and out.count("Dense            backward ") == 2
    assert out.count("BatchNorm        forward_relu ") == 2  # the fused calls are timed too
    assert out.count("the rest (loss, optimizer, graph sums)") == 2
