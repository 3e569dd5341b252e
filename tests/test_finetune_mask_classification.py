"""End to end for mask-classification models: a tiny Mask2Former, MaskFormer, OneFormer and EoMT each train 2 steps
through `hfseg finetune` on real sample data with their own loss (main and auxiliary parts logged), and the saved run
is fine-tuned again onto another label set (ISBI EM, whose 255 is a class). OneFormer's run, with its tokenizer,
loads in transformers' pipeline."""

import json
import math
import re

import pytest
from conftest import TINY_MASK_CLASSIFICATION

from hfseg.finetune import main
from hfseg.models.build import is_mask_classification, load_for_inference

GENERIC_ID2LABEL = {"0": "background", "1": "one", "2": "two", "3": "three"}
EM_ID2LABEL = {"0": "membrane", "1": "cell"}


def run_flags(output_dir, *extra: str) -> list[str]:
    return [
        "--image_size", "64", "--crop_size", "64", "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1",
        "--num_preview_images", "1", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def logged(text: str, name: str) -> list[float]:
    return [float(value) for value in re.findall(rf"'{name}': '([-0-9.e]+)'", text)]


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(TINY_MASK_CLASSIFICATION))
def test_trains_with_its_own_loss_then_takes_a_new_label_set(
    model_type, tmp_path, shared_data, capsys, tiny_clip_tokenizer
):
    tokenizer = ["--tokenizer_name_or_path", str(tiny_clip_tokenizer)] if model_type == "oneformer" else []
    generic_labels = tmp_path / "generic_id2label.json"
    generic_labels.write_text(json.dumps(GENERIC_ID2LABEL))
    first = tmp_path / "first"
    main(
        [
            "--model_type", model_type, "--config_overrides", json.dumps(TINY_MASK_CLASSIFICATION[model_type]),
            "--data_dir", str(shared_data / "generic_splits"), "--layout", "folder",
            "--image_suffix", "_img", "--mask_suffix", "_gt", "--id2label_file", str(generic_labels),
            *tokenizer, *run_flags(first),
        ]
    )  # fmt: skip
    log = capsys.readouterr()
    log = log.out + log.err
    losses, mains, auxiliaries = logged(log, "loss"), logged(log, "loss_main"), logged(log, "loss_aux")
    assert len(losses) == len(mains) == len(auxiliaries) == 2, log[-3000:]
    for loss, loss_main, loss_aux in zip(losses, mains, auxiliaries, strict=True):
        assert math.isfinite(loss) and loss_main > 0 and loss_aux > 0  # every family supervises earlier layers
        assert loss == pytest.approx(loss_main + loss_aux, rel=2e-3)  # the logs round to 4 digits
    results = json.loads((first / "eval_results.json").read_text())
    assert 0.0 <= results["eval_mean_iou"] <= 1.0 and math.isfinite(results["eval_loss"])
    config = json.loads((first / "config.json").read_text())
    assert config["model_type"] == model_type and config["id2label"] == GENERIC_ID2LABEL
    if model_type == "oneformer":  # saved to run on pixels and task inputs alone; trained with the text encoder
        assert config["is_training"] is False and len(config["hfseg_task_inputs"]) == config["task_seq_len"]
        assert (first / "tokenizer.json").is_file()

    em_labels = tmp_path / "em_id2label.json"
    em_labels.write_text(json.dumps(EM_ID2LABEL))
    second = tmp_path / "second"
    main(
        [
            "--model_name_or_path", str(first),
            "--data_dir", str(shared_data / "isbi_em" / "train"), "--layout", "folder",
            "--label_map", '{"0": 0, "255": 1}', "--id2label_file", str(em_labels),
            *run_flags(second),
        ]
    )  # fmt: skip
    log = capsys.readouterr()
    assert len(logged(log.out + log.err, "loss_main")) == 2
    config = json.loads((second / "config.json").read_text())
    assert config["model_type"] == model_type and config["id2label"] == EM_ID2LABEL
    from safetensors import safe_open

    with safe_open(str(second / "model.safetensors"), "pt") as weights:
        names = list(weights.keys())  # noqa: SIM118 (safe_open is not iterable)
        classifier = [name for name in names if re.search(r"class_(predictor|embed)\.weight$", name)]
        assert classifier and all(weights.get_slice(name).get_shape()[0] == 3 for name in classifier)  # 2 + none
    results = json.loads((second / "eval_results.json").read_text())
    assert len(results["eval_per_category_iou"]) == 2
    model, processor = load_for_inference(str(second))  # what `hfseg evaluate` / `hfseg predict` load
    assert is_mask_classification(model) and model.config.num_labels == 2 and not model.training
    assert getattr(processor, "do_reduce_labels", False) is False  # hfseg applies the label spec itself
    if model_type == "oneformer":
        from PIL import Image
        from transformers import pipeline

        image = Image.open(shared_data / "isbi_em" / "train" / "image" / "0.png").convert("RGB")
        segments = pipeline("image-segmentation", model=str(second))(image, subtask="semantic")
        assert segments and {segment["label"] for segment in segments} <= set(EM_ID2LABEL.values())
        assert all(segment["mask"].size == image.size for segment in segments)


@pytest.mark.slow
def test_two_processes_log_loss_parts_averaged_like_the_loss(tmp_path, shared_data):
    """Each process sees other images: the logged parts add up to the logged loss (the mean over processes) only if
    they are averaged over the processes too, not taken from the first process alone."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import ROOT

    labels = tmp_path / "id2label.json"
    labels.write_text(json.dumps(GENERIC_ID2LABEL))
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"),
         str(ROOT / "hfseg" / "finetune.py"),
         "--model_type", "mask2former", "--config_overrides", json.dumps(TINY_MASK_CLASSIFICATION["mask2former"]),
         "--data_dir", str(shared_data / "generic_splits"), "--layout", "folder",
         "--image_suffix", "_img", "--mask_suffix", "_gt", "--id2label_file", str(labels),
         *run_flags(tmp_path / "out"), "--report_to", "none", "--use_cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    losses, mains, auxiliaries = logged(log, "loss"), logged(log, "loss_main"), logged(log, "loss_aux")
    assert len(losses) == len(mains) == len(auxiliaries) == 2, log[-3000:]
    for loss, loss_main, loss_aux in zip(losses, mains, auxiliaries, strict=True):
        assert loss == pytest.approx(loss_main + loss_aux, rel=2e-3)
