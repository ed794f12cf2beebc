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


def test_readme_trainer_example_trains_on_arrays_with_a_user_callback(tmp_path, monkeypatch, capsys):
    import jimunet as jn
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### Training on your own arrays: `jn.Trainer`.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # it saves checkpoint.npz into the working directory
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    trainer, history = namespace["trainer"], namespace["history"]
    assert isinstance(trainer, jn.Trainer) and history is trainer.history
    assert any(isinstance(cb, jn.training.Callback) for cb in trainer.callbacks)
    # the user's callback printed every epoch and ended training early, at its target
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == len(history.epochs) < 30
    assert history.epochs[-1]["val_error"] <= 2.0 < min(e["val_error"] for e in history.epochs[:-1])
    assert (tmp_path / "checkpoint.npz").is_file()
    resumed = jn.Trainer(trainer.model, trainer.loss_fn, trainer.optimizer, batch_size=32)
    resumed.load_checkpoint(tmp_path / "checkpoint.npz")
    assert resumed.epoch == len(history.epochs) and resumed.history.step_loss == history.step_loss
