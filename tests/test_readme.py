"""The README's API example runs as written, and its quick start is what .ci/run runs."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_api_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)  # it saves mnist.npz into the working directory
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    model = namespace["model"]
    assert model.summary((28, 28, 1)).total_params == 1_663_370
    assert (tmp_path / "mnist.npz").is_file()
    assert all(abs(p.grad).sum() == 0 for p in model.parameters())  # reloaded: fresh gradients


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quick = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(quick) == 2, "the quick start is exactly two commands"
    test_cmd = quick[1].split("#")[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci


def test_readme_graph_example_runs():
    import numpy as np

    import jimunet as jn
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    namespace = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model, jn.Model)
    assert {"Add", "BatchNorm", "GlobalAvgPool2D"} <= {type(layer).__name__ for layer in model.layers}
    assert model.forward(np.zeros((2, 28, 28, 1), np.float32), training=True).shape == (2, 10)
