"""End to end: the entry script, run by path, trains, evaluates and saves everything a user needs."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT, tiny_run_args

from hfseg.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "hfseg" / "finetune.py"), *tiny_run_args(output_dir)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


def test_outputs_are_complete(finished_run):
    names = {path.name for path in finished_run.iterdir()}
    for expected in (
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "hfseg_config.yaml",
        "eval_results.json",
        "README.md",
        "predictions.png",
    ):
        assert expected in names, f"{expected} missing from {sorted(names)}"
    assert not any(name.endswith(".bin") and name != "training_args.bin" for name in names)


def test_config_carries_labels_and_processor_does_not_reduce(finished_run):
    config = json.loads((finished_run / "config.json").read_text())
    assert config["id2label"]["1"] == "disc"
    assert config["label2id"]["striped_ellipse"] == 4
    processor = json.loads((finished_run / "preprocessor_config.json").read_text())
    assert processor["do_reduce_labels"] is False
    assert processor["size"] == {"height": 64, "width": 64}


def test_eval_results_have_evaluate_keys(finished_run):
    results = json.loads((finished_run / "eval_results.json").read_text())
    for key in (
        "eval_mean_iou",
        "eval_mean_accuracy",
        "eval_overall_accuracy",
        "eval_per_category_iou",
        "eval_per_category_accuracy",
        "eval_iou_background",
    ):
        assert key in results
    assert 0.0 <= results["eval_overall_accuracy"] <= 1.0
    assert len(results["eval_per_category_iou"]) == 5


def test_card_and_resolved_config(finished_run):
    card = (finished_run / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card
    assert "| 1 | disc |" in card
    resolved = yaml.safe_load((finished_run / "hfseg_config.yaml").read_text())
    assert resolved["max_steps"] == 4 and resolved["dataset_name"] == "synthetic"


def test_transformers_pipeline_runs_on_saved_model(finished_run):
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(finished_run))
    image = make_synthetic_dataset(train_size=1, eval_size=1, seed=5)["validation"][0]["image"]
    segments = segmenter(image)
    assert segments, "pipeline returned no segments"
    names = {"background", "disc", "box", "triangle", "striped_ellipse"}
    for segment in segments:
        assert segment["label"] in names
        assert segment["mask"].size == image.size
    coverage = sum(np.asarray(segment["mask"]) > 0 for segment in segments)
    assert (coverage == 1).all(), "segments should tile the image exactly once"


def test_unknown_recipe_is_one_line_error_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "hfseg" / "finetune.py"), "--recipe", "nope", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "recipe 'nope' not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_recipe_fails_fast_offline(tmp_path):
    """Without the Hub, segformer_ade explains how to point at local copies instead of a long traceback."""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HOME": str(tmp_path)}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's package, not the one the venv's editable install points at
    result = subprocess.run(
        [sys.executable, str(ROOT / "hfseg" / "finetune.py"), "--recipe", "segformer_ade",
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "cannot reach the Hugging Face Hub" in result.stderr
    assert "--model_name_or_path" in result.stderr and "--dataset_name" in result.stderr
    assert "Traceback" not in result.stderr
