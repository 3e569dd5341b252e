"""End to end on real binary masks (ISBI EM, 0 = membrane, 255 = cell): `--task auto` detects a binary task and
trains one sigmoid logit with bce, then `hfseg evaluate`, `hfseg predict` and the plain image-segmentation pipeline
serve the saved run."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, tiny_run_args
from PIL import Image

EM_ID2LABEL = {"0": "membrane", "1": "cell"}
EM_LABEL_MAP = '{"0": 0, "255": 1}'


def em_data_flags(shared_data, id2label_file) -> list[str]:
    return [
        "--data_dir", str(shared_data / "isbi_em" / "train"), "--layout", "folder",
        "--label_map", EM_LABEL_MAP, "--id2label_file", str(id2label_file),
    ]  # fmt: skip


def em_run_args(output_dir, shared_data, id2label_file, *extra: str) -> list[str]:
    """tiny_run_args with the EM pairs in place of the synthetic data (3 train pairs, 1 held out)."""
    args = tiny_run_args(output_dir, "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "1")
    start = args.index("--dataset_name")
    del args[start : start + 2]
    return [*args, *em_data_flags(shared_data, id2label_file), *extra]


@pytest.fixture(scope="module")
def binary_em_run(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("binary_em")
    id2label_file = root / "id2label.json"
    id2label_file.write_text(json.dumps(EM_ID2LABEL))
    output_dir = root / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "hfseg" / "finetune.py"),
         *em_run_args(output_dir, shared_data, id2label_file, "--task", "auto")],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, id2label_file, result.stdout + result.stderr


@pytest.mark.slow
def test_binary_em_trains_with_finite_loss_and_reports_foreground_metrics(binary_em_run):
    output_dir, _, log = binary_em_run
    # Asked to detect the task: two classes make a one-logit sigmoid head, trained with bce as no --loss is given.
    assert "--task auto: two classes (0=membrane, 1=cell): binary" in log
    losses = [float(value) for value in re.findall(r"'loss': '([-0-9.e]+)'", log)]
    assert len(losses) == 4 and all(math.isfinite(loss) and loss >= 0 for loss in losses), losses
    results = json.loads((output_dir / "eval_results.json").read_text())
    for name in ("iou", "dice", "precision", "recall"):
        assert 0.0 <= results[f"eval_foreground_{name}"] <= 1.0
    assert results["eval_foreground_iou"] == results["eval_per_category_iou"][1]
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == EM_ID2LABEL and config["binary_threshold"] == 0.5


@pytest.mark.slow
def test_hfseg_evaluate_scores_the_saved_binary_run_with_foreground_metrics(binary_em_run, shared_data, tmp_path):
    from hfseg.evaluation.evaluate_model import main as evaluate_main

    output_dir, id2label_file, _ = binary_em_run
    trained = json.loads((output_dir / "eval_results.json").read_text())
    # The label map travels with the model: no --label_map here.
    flags = ["--data_dir", str(shared_data / "isbi_em" / "train"), "--layout", "folder"]
    evaluate_main(["--model", str(output_dir), *flags, "--output_dir", str(tmp_path), "--report_to", "none"])
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["num_images"] == 1 and results["id2label"] == EM_ID2LABEL
    # The same held-out image, the same thresholded mask: the saved two-class head scores as training did.
    for key in ("eval_foreground_iou", "eval_foreground_dice", "eval_mean_iou"):
        assert results[key] == pytest.approx(trained[key], abs=1e-3), key


@pytest.mark.slow
def test_predict_and_plain_pipeline_give_the_same_two_class_mask(binary_em_run, shared_data, tmp_path):
    from transformers import pipeline

    from hfseg.evaluation.predict import main as predict_main

    output_dir, _, _ = binary_em_run
    image_path = shared_data / "isbi_em" / "train" / "image" / "0.png"
    written = predict_main(["--model", str(output_dir), "--input", str(image_path), "--output", str(tmp_path)])
    mask = np.asarray(Image.open(written[0]))
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 1}

    image = Image.open(image_path)
    segments = pipeline("image-segmentation", model=str(output_dir))(image)
    masks = {segment["label"]: np.asarray(segment["mask"]) > 0 for segment in segments}
    assert set(masks) == {"membrane", "cell"}  # both class names, each with pixels
    assert np.array_equal(masks["membrane"], ~masks["cell"])
    # predict (whole-image inference at the original size) and the pipeline agree up to rounding at the threshold
    assert (masks["cell"] == (mask == 1)).mean() > 0.99
