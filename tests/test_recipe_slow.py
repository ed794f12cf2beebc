"""The headline result: the TF sample's full MNIST recipe reaches the sample's accuracy.

Slow (several minutes on 2 cores), so deselected by default; run it with
``python -m pytest -m slow``.
"""
import json

import pytest

import jimunet as jn
from jimunet.recipes import MNISTConfig
from jimunet.train import train_mnist


@pytest.mark.slow
def test_full_mnist_recipe_reaches_the_samples_accuracy(tmp_path):
    # The recipe's 10 epochs with the sample's seed (the defaults of `jimunet train`). Measured
    # test errors (BENCHMARKS.md): 0.71% / 0.68% / 0.76% for seeds 66478 / 1 / 2 on a 2-vCPU
    # AVX-512 EPYC (OpenBLAS SkylakeX kernels), 0.63% / 0.70% / 0.74% on a 16-core host with
    # other BLAS kernels. 0.8% is the sample's own acceptance line; other CPUs round differently
    # and land elsewhere in that spread, which all six runs keep below the bar.
    run = tmp_path / "run"
    data = jn.datasets.load_mnist(progress=False)
    r = train_mnist(MNISTConfig(out=str(run), progress=False), data=data, echo=True)
    assert r.test_error <= 0.8, f"test error {r.test_error:.2f}% (bar 0.8%)"
    h = r.history
    assert len(h.epochs) == 10 and len(h.step_loss) == 10 * (55000 // 64)
    assert h.best_val_error <= 1.0, h.best_val_error  # 5,000 held-out images; measured 0.72-0.78%
    with open(run / "metrics.json") as f:
        m = json.load(f)
    assert m["status"] == "completed" and m["data"]["train"] == 55000 and m["data"]["test"] == 10000
    assert m["test_error"] == pytest.approx(r.test_error)
    assert (run / "report.html").is_file()  # the end-of-training report of a real run
