"""The tutorial notebooks (notebooks/tutorial.en.ipynb, notebooks/tutorial.zh-CN.ipynb).

They retell the ai-edu CNN tutorial with jimunet, one in English and one in Chinese. These tests
keep them from rotting: both share one code (the same cells, the same code, only the prose
differs), are committed without outputs, and run from top to bottom with nbclient on the quick
training run (``JIMUNET_NOTEBOOK_QUICK=1``), printing the checks they promise. The English one
runs with matplotlib when it is installed, the Chinese one with matplotlib hidden, so both of
the notebook's paths are exercised. nbclient, nbformat and ipykernel come with the ``test``
extra; without them these tests skip with the reason, except under ``CI=true``, where they fail.
"""
import importlib
import importlib.util
import json
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = {"en": ROOT / "notebooks" / "tutorial.en.ipynb", "zh-CN": ROOT / "notebooks" / "tutorial.zh-CN.ipynb"}
NUMBER = r"([0-9.]+(?:e[+-][0-9]+)?)"


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        problem = f"{module} is not installed (pip install -e \".[test]\")"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the notebook tests must run in CI: {problem}")
        pytest.skip(problem)


def _cells(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)["cells"]


def _source(cell) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def test_both_notebooks_have_the_same_cells_and_code():
    en, zh = (_cells(p) for p in NOTEBOOKS.values())
    assert [c["cell_type"] for c in en] == [c["cell_type"] for c in zh]
    for i, (a, b) in enumerate(zip(en, zh)):
        if a["cell_type"] == "code":
            assert _source(a) == _source(b), f"code cell {i} differs between the English and Chinese notebooks"
        else:
            assert _source(a) != _source(b), f"markdown cell {i} is not translated"


@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_notebooks_are_committed_without_outputs(lang):
    for i, cell in enumerate(_cells(NOTEBOOKS[lang])):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, \
                f"{NOTEBOOKS[lang].name}: code cell {i} holds outputs; clear them before committing"


def _execute(path, cwd):
    nbformat = _require("nbformat")
    nbclient = _require("nbclient")
    _require("ipykernel")
    nb = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, startup_timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    text, kinds = [], set()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            kinds.add(out["output_type"])
            if out["output_type"] == "stream":
                text.append(out["text"])
            elif "text/plain" in out.get("data", {}):
                text.append(out["data"]["text/plain"])
    return "".join(text), kinds


@pytest.mark.parametrize("lang", NOTEBOOKS)
def test_notebook_runs_and_prints_its_checks(lang, tmp_path, monkeypatch):
    monkeypatch.setenv("JIMUNET_NOTEBOOK_QUICK", "1")
    # the kernel is a new process and takes its environment from this one: the quick run's
    # directory goes into tmp_path, and it imports this checkout's jimunet
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    env_path = [str(ROOT / "src")]
    hide_matplotlib = lang == "zh-CN"
    if hide_matplotlib:
        stub = tmp_path / "no-matplotlib" / "matplotlib"
        stub.mkdir(parents=True)
        (stub / "__init__.py").write_text('raise ImportError("matplotlib hidden by tests/test_notebooks.py")\n')
        env_path.insert(0, str(stub.parent))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(env_path + ([old] if old else [])))
    out, kinds = _execute(NOTEBOOKS[lang], tmp_path)

    assert "error" not in kinds
    if hide_matplotlib:
        assert "matplotlib: no" in out and "display_data" not in kinds
    elif importlib.util.find_spec("matplotlib") is not None:
        assert "matplotlib: yes" in out and "display_data" in kinds
    assert "quick run: True" in out

    # one convolution: the three forward computations and the hand-made backward agree with Conv2D
    fwd = re.search(rf"loops vs im2col: {NUMBER}, im2col vs Conv2D: {NUMBER}", out)
    assert fwd and max(map(float, fwd.groups())) < 1e-12, out
    bwd = re.search(rf"dW: {NUMBER}, db: {NUMBER}\ndX by col2im: {NUMBER}, dX by the rotated kernel: {NUMBER}", out)
    assert bwd and max(map(float, bwd.groups())) < 1e-12, out
    fd = re.search(rf"conv dX relative error {NUMBER}, dW relative error {NUMBER}", out)
    assert fd and max(map(float, fd.groups())) < 1e-6, out
    # gradcheck passes for both convolutions, both poolings and jimunet's Dropout...
    passed = [line for line in out.splitlines() if re.fullmatch(rf"max relative error {NUMBER}: OK", line)]
    assert len(passed) == 5, out
    # ...and fails for a Dropout whose backward forgets the 1/(1-p) scale (off by half at p = 0.5)
    failed = re.search(rf"max relative error {NUMBER}: FAIL", out)
    assert failed and abs(float(failed.group(1)) - 0.5) < 1e-6, out
    # max-pooling with overlapping windows: the tutorial's write keeps 4, the right gradient is 1+2+3+4
    assert "centre cell: tutorial 4.0, jimunet 10.0, finite difference 10.0" in out
    # the loss: jimunet's gradient matches the finite difference of the mean; A - Y is N times that
    loss = re.search(rf"softmax cross-entropy gradient vs finite difference: relative error {NUMBER}", out)
    assert loss and float(loss.group(1)) < 1e-6, out
    assert "A - Y is 64.0 times the gradient of the mean loss (n = 64)" in out
    # the quick training run, the confusion matrix, explain and the feature maps
    assert "data: 5000 train / 1000 validation / 2000 test" in out
    err = re.search(rf"test error {NUMBER}%; most frequent mistake", out)
    assert err and float(err.group(1)) < 50, out  # 9.15% measured; far better than chance
    assert "top-3    (softmax of the last layer's output)" in out
    assert "conv1 channels, strongest response first:" in out
    assert re.search(r"[0-9]+ of 2000 test images wrong", out)
