"""Each figure the README gives has one source: where it is repeated, it is the README's, and
the README says which file a figure is for."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROSE = " ".join(README.split())  # line breaks do not matter in prose


def test_the_recipe_time_is_the_readme_figure_wherever_it_is_given(tmp_path):
    from jimunet.app import serve
    minutes, seconds = re.search(r"0\.73% in (about \d+ minutes) \((\d+) s\)", PROSE).groups()
    assert f"it took {seconds} s" in PROSE  # the quick start's measurement
    with pytest.raises(serve.ServeError) as info:  # serve without a model says how long training takes
        serve.choose_model(runs_dir=str(tmp_path))
    assert f"10 epochs, {minutes} on 2 recent cores" in str(info.value)


def test_the_test_time_is_given_once_and_the_quick_start_points_to_it():
    quick = re.search(r"## Quick start(.*?) ## ", PROSE).group(1)
    assert "The tests take a few minutes ([Development](#development))" in quick
    assert len(re.findall(r"`python -m pytest -q` runs the fast tests \(", PROSE)) == 1
    assert "about a minute" not in PROSE


def test_each_test_error_names_its_model_file():
    intro = PROSE.split("## Quick start")[0]
    assert "0.73% is the last epoch's weights (`model.npz`)" in intro
    assert "(`best.npz`, which the examples below load) give 0.76%" in intro
    transcript = re.search(r"## Quick start.*?```\n(starting run.*?)```", README, re.S).group(1)
    assert "test error 0.73% (accuracy 99.27%, 10000 images): model.npz, the weights after the last epoch" in transcript
    assert "test error of best.npz, the weights of epoch 8 (the lowest validation error, 0.82%): 0.76%" in transcript


def test_conv2d_says_where_it_is_read_first_that_it_pads_same():
    import numpy as np

    import jimunet as jn
    first_line = jn.layers.Conv2D.__doc__.strip().splitlines()[0]
    assert '"same"`` by default, unlike Keras and PyTorch' in first_line
    assert jn.layers.Conv2D(1, 2, 5)(np.zeros((1, 9, 9, 1), np.float32)).shape == (1, 9, 9, 2)  # what it says
    api = PROSE.split("## The API")[1].split(" ## ")[0]
    assert '`Conv2D` pads `"same"` by default' in api and '`padding="valid"`' in api
