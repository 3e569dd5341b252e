"""`hfseg app` without a server: class areas, the legend, the card metrics, the Space folder, gradio missing."""

import ast
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, SHARED_DATA, save_tiny_model
from PIL import Image

from hfseg.deploy.app import card_metrics, class_areas, legend_html, main
from hfseg.hub.card import build_model_card
from hfseg.hub.space import write_space

ID2LABEL = {0: "road", 1: "car <small>", 2: "sky"}
SAMPLE_IMAGE = SHARED_DATA / "voc2012/VOCdevkit/VOC2012/JPEGImages/2007_000063.jpg"


@pytest.fixture(scope="module")
def carded_model(tmp_path_factory):
    """A tiny saved model with a model card, as a finished run has."""
    directory = save_tiny_model(tmp_path_factory.mktemp("carded"), ID2LABEL)
    metrics = {"eval_mean_iou": 0.4321, "eval_mean_accuracy": 0.55, "eval_overall_accuracy": 0.875,
               "eval_per_category_iou": [0.5, 0.3, 0.5], "eval_per_category_accuracy": [0.6, 0.4, 0.6]}  # fmt: skip
    build_model_card(metrics, ID2LABEL, "carded", config={"dataset_name": "synthetic"}).save(directory / "README.md")
    return directory


def test_class_areas_count_pixels_largest_first():
    mask = np.array([[2, 2, 2, 0], [2, 2, 0, 0]])
    assert class_areas(mask, ID2LABEL) == [["sky", 5, 62.5], ["road", 3, 37.5]]


def test_legend_names_every_class_in_its_palette_colour_escaped():
    palette = np.array([[1, 2, 3], [40, 50, 60], [255, 0, 7]], dtype=np.uint8)
    text = legend_html(ID2LABEL, palette)
    assert text.count("hfseg-legend-item") == 3
    assert "rgb(40,50,60)" in text and "rgb(255,0,7)" in text
    assert "car &lt;small&gt;" in text and "<small>" not in text


def test_card_metrics_come_from_the_model_card(carded_model, tmp_path):
    text = card_metrics(str(carded_model))
    assert "| mean_iou | 0.4321 |" in text and "| overall_accuracy | 0.8750 |" in text and "synthetic" in text
    assert "No model card" in card_metrics(str(tmp_path))


def test_missing_gradio_names_the_extra(carded_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main([str(carded_model), "--port", "7999"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "pip install 'hfseg[app]'" in error and "Traceback" not in error


def test_write_space_copies_the_run_and_writes_a_gradio_space(carded_model, tmp_path):
    space = tmp_path / "space"
    main([str(carded_model), "--write_space", str(space), "--examples", str(SAMPLE_IMAGE)])
    readme = (space / "README.md").read_text()
    front_matter = yaml.safe_load(readme.split("---")[1])
    assert front_matter["sdk"] == "gradio" and front_matter["app_file"] == "app.py"
    assert front_matter["sdk_version"].split(".")[0] in {"5", "6"}
    assert (space / "requirements.txt").read_text().startswith("hfseg[app]")
    assert {p.name for p in (space / "model").iterdir()} >= {"model.safetensors", "config.json", "README.md"}
    assert (space / "examples" / SAMPLE_IMAGE.name).read_bytes() == SAMPLE_IMAGE.read_bytes()
    app_source = (space / "app.py").read_text()
    ast.parse(app_source)
    assert 'MODEL = str(HERE / "model")' in app_source


def test_write_space_for_a_hub_model_loads_it_by_id(tmp_path):
    write_space(tmp_path, "someone/seg-model")
    front_matter = yaml.safe_load((tmp_path / "README.md").read_text().split("---")[1])
    assert front_matter["models"] == ["someone/seg-model"]
    assert "MODEL = 'someone/seg-model'" in (tmp_path / "app.py").read_text()
    assert not (tmp_path / "model").exists()


def test_cli_lists_the_app_verb():
    result = subprocess.run([sys.executable, "-m", "hfseg.cli", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "app " in result.stdout


def test_examples_without_images_are_named(carded_model, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit) as exit_info:
        main([str(carded_model), "--write_space", str(tmp_path / "space"), "--examples", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"--examples {tmp_path}: no image files found" in capsys.readouterr().err


def test_a_synthetic_run_offers_its_validation_images(carded_model, tmp_path):
    from hfseg.data.synthetic import make_synthetic_dataset
    from hfseg.deploy.app import synthetic_validation_examples

    run = tmp_path / "run"
    shutil.copytree(carded_model, run)
    assert synthetic_validation_examples(str(run), tmp_path / "none") == []  # no resolved config: no examples
    (run / "hfseg_config.yaml").write_text(yaml.safe_dump({"dataset_name": "synthetic", "synthetic_eval_size": 6,
                                                          "synthetic_train_size": 16, "seed": 3}))  # fmt: skip
    paths = synthetic_validation_examples(str(run), tmp_path / "examples")
    validation = make_synthetic_dataset(16, 6, seed=3)["validation"]  # what the run was evaluated on
    assert len(paths) == 4
    for path, row in zip(paths, validation, strict=False):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(row["image"]))
    (run / "hfseg_config.yaml").write_text(yaml.safe_dump({"dataset_name": "scene_parse_150", "seed": 3}))
    assert synthetic_validation_examples(str(run), tmp_path / "other") == []
