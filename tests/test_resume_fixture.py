"""A run directory written by an older jimunet resumes under this one, bit-identically.

``fixtures/resume_run.tar.xz`` is the run directory of ``jimunet train --model resnet`` on
small synthetic data (``fixtures/resume_run.json``'s ``config``, ``make_resume_fixture.
synthetic_mnist``) as the code
of commit 818601d left it when interrupted after epoch 1; ``resume_run.json`` holds the
SHA-256 of the final weights and checkpoint, and the metrics, of the UNINTERRUPTED run made
by that same code (``fixtures/make_resume_fixture.py`` made both). Resuming the old run
directory with today's code must end exactly there: the checkpoint format, the parameter
names of a graph model, the optimizer state, the RNG streams (shuffling, augmentation) and
the schedule all carry across versions.
"""
import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from jimunet.app.training import train_mnist

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _fixture_helpers():
    """``make_resume_fixture``'s hashing helpers (the module imports jimunet only in main())."""
    spec = importlib.util.spec_from_file_location("make_resume_fixture",
                                                  os.path.join(FIXTURES, "make_resume_fixture.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _unpack(tmp_path):
    with tarfile.open(os.path.join(FIXTURES, "resume_run.tar.xz"), "r:xz") as tar:
        names = tar.getnames()
        assert all(n.startswith("resume_run/") and ".." not in n for n in names), names
        if hasattr(tarfile, "data_filter"):  # Python >= 3.12, 3.11.4, 3.10.12, 3.9.17
            tar.extractall(tmp_path, filter="data")
        else:
            tar.extractall(tmp_path)
    return tmp_path / "resume_run"


def test_fixture_is_an_interrupted_run_of_the_old_version(tmp_path):
    run = _unpack(tmp_path)
    assert sorted(os.listdir(run)) == ["best.npz", "checkpoint.npz", "metrics.json", "run.json", "train.log"]
    assert json.loads((run / "run.json").read_text()) == {"format": "jimunet-run", "version": 1,
                                                          "status": "interrupted", "jimunet": "0.1.0"}
    with np.load(run / "checkpoint.npz", allow_pickle=False) as z:
        meta = json.loads(z["__meta__"].tobytes())
    assert meta["format"] == "jimunet-checkpoint" and meta["state"]["epoch"] == 1
    assert meta["metadata"]["config"]["out"] is None and meta["metadata"]["config"]["data_dir"] is None
    assert not os.path.isabs(json.loads((run / "metrics.json").read_text())["config"]["out"] or "")


def resume_and_summarise(run) -> dict:
    """Resume ``run`` with today's code; what the old version's uninterrupted run is compared on."""
    helpers = _fixture_helpers()
    with open(os.path.join(FIXTURES, "resume_run.json")) as f:
        names = json.load(f)["checkpoint_arrays"]
    data = helpers.synthetic_mnist()
    data_sha256 = helpers.weights_sha256({"x_train": data[0][0], "y_train": data[0][1], "x_test": data[1][0],
                                          "y_test": data[1][1]})
    result = train_mnist(resume=run, data=data, echo=False)
    checkpoint = helpers.npz_arrays(os.path.join(run, "checkpoint.npz"))
    with open(os.path.join(run, "run.json")) as f:
        status = json.load(f)["status"]
    return {**helpers.summary(str(run)), "blas": helpers.blas(), "data_sha256": data_sha256, "run_dir": result.run_dir,
            "epochs": [e["epoch"] for e in result.history.epochs], "test_accuracy": result.test_accuracy,
            "status": status, "lock_left": os.path.exists(os.path.join(run, ".jimunet.lock")),
            "old_arrays_kept": set(names) <= set(checkpoint),
            "old_arrays_sha256": helpers.weights_sha256(checkpoint, names) if set(names) <= set(checkpoint) else None}


def _kernels(blas):
    return [(b["internal_api"], b["architecture"]) for b in blas]


def test_old_run_directory_resumes_bit_identically(tmp_path):
    """Bit-identity holds where the BLAS kernels are the fixture's (OpenBLAS picks them by CPU):
    elsewhere the resume runs in a subprocess told to use them (``OPENBLAS_CORETYPE``)."""
    helpers = _fixture_helpers()
    with open(os.path.join(FIXTURES, "resume_run.json")) as f:
        expected = json.load(f)
    run = _unpack(tmp_path / "moved")  # elsewhere than where it was written, as a user would
    if _kernels(helpers.blas()) == _kernels(expected["blas"]):
        got = resume_and_summarise(str(run))
    else:
        env = dict(os.environ, OPENBLAS_CORETYPE=expected["blas"][0]["architecture"])
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(run)], env=env, capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        if _kernels(got["blas"]) != _kernels(expected["blas"]):
            pytest.skip(f"the fixture's weights were made with BLAS kernels {_kernels(expected['blas'])}; this "
                        f"machine uses {_kernels(got['blas'])} and cannot be told to use those")
    assert got["data_sha256"] == expected["data_sha256"], "synthetic_mnist() no longer makes the fixture's data"
    assert got["run_dir"] == str(run) and got["epochs"] == [1, 2]
    assert got["status"] == "completed" and not got["lock_left"]
    assert got["model_sha256"] == expected["model_sha256"], "final weights differ from the old version's"
    # the checkpoint may gain arrays; the old ones (weights, momentum, BN statistics) must be equal
    assert got["old_arrays_kept"]
    assert got["old_arrays_sha256"] == expected["checkpoint_sha256"]
    assert got["metrics"] == expected["metrics"]
    assert got["test_accuracy"] == expected["metrics"]["test_accuracy"]


if __name__ == "__main__":  # the subprocess of test_old_run_directory_resumes_bit_identically
    got = resume_and_summarise(sys.argv[1])
    print(json.dumps({**got, "checkpoint_arrays": None}))
