"""`hfseg evaluate` on a saved tiny model: original-resolution scores, outputs, equality with a plain loop,
real ADE20K samples, and 2 processes == 1 process exactly."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, save_tiny_model
from PIL import Image

from hfseg.data.labels import LabelSpec
from hfseg.data.synthetic import make_synthetic_dataset
from hfseg.evaluation.evaluate_model import main as evaluate_main
from hfseg.evaluation.inference import InferenceOptions, eval_transform_for, predict_masks
from hfseg.evaluation.metrics import StreamingSegmentationMetric

RESULT_KEYS = (
    "eval_overall_accuracy", "eval_mean_iou", "eval_mean_accuracy", "eval_mean_dice", "eval_mean_fscore",
    "eval_mean_precision", "eval_mean_recall", "eval_per_category_iou", "eval_per_category_fscore",
)  # fmt: skip


@pytest.fixture(scope="module")
def saved_data(tmp_path_factory):
    """5 validation images of different sizes (an odd count: a 2-process sampler must pad), saved to disk
    without class names (the model's are used)."""
    directory = tmp_path_factory.mktemp("data") / "synthetic"
    make_synthetic_dataset(train_size=2, eval_size=5, seed=3, min_size=40, max_size=72).save_to_disk(str(directory))
    return directory


def run_evaluate(model, data, output_dir, *extra):
    argv = ["--model", str(model), "--dataset_name", str(data), "--output_dir", str(output_dir),
            "--per_device_eval_batch_size", "2", "--report_to", "none", *extra]  # fmt: skip
    metrics = evaluate_main(argv)
    return metrics, json.loads((output_dir / "eval_results.json").read_text())


def test_evaluate_scores_at_original_resolution_and_writes_outputs(saved_tiny_model, saved_data, tmp_path, capsys):
    metrics, results = run_evaluate(saved_tiny_model, saved_data, tmp_path, "--worst", "2")
    for key in RESULT_KEYS:
        assert results[key] == metrics[key]
    confusion = np.array(results["confusion_matrix"])
    assert confusion.shape == (5, 5)
    masks = make_synthetic_dataset(train_size=2, eval_size=5, seed=3, min_size=40, max_size=72)["validation"]
    labelled_pixels = sum(np.asarray(row["annotation"]).size for row in masks)
    assert confusion.sum() == labelled_pixels, "every pixel at the masks' own size is scored once"
    assert results["eval_overall_accuracy"] == pytest.approx(np.trace(confusion) / labelled_pixels)
    assert results["num_images"] == 5 and results["inference"]["mode"] == "whole"
    worst = results["worst_images"]
    assert len(worst) == 2 and worst[0]["mean_iou"] <= worst[1]["mean_iou"]
    # Rows saved as image bytes have no file name: the row index names them.
    assert worst[0]["image"] is None and worst[0]["mask"] is None
    for name in ("confusion_matrix.png", "worst_images.png"):
        assert Image.open(tmp_path / name).size[0] > 100
    printed = capsys.readouterr().out
    assert "| striped_ellipse" in printed and "| aAcc" in printed
    assert f"{worst[0]['mean_iou']:.4f}  row {worst[0]['index']}" in printed
    assert f"{100 * results['eval_mean_iou']:.2f}" in printed


def test_evaluate_equals_a_plain_loop_over_images_in_slide_tta_mode(saved_tiny_model, saved_data, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    flags = ["--eval_mode", "slide", "--eval_crop_size", "48", "--eval_stride", "24", "--eval_flip"]
    _, results = run_evaluate(saved_tiny_model, saved_data, tmp_path, *flags)
    assert results["inference"] == {"mode": "slide", "scales": [1.0], "flip": True, "crop_size": 48, "stride": 24,
                                    "short_side": 64, "crop_batch_size": 8}  # fmt: skip
    model = AutoModelForSemanticSegmentation.from_pretrained(saved_tiny_model).eval()
    processor = AutoImageProcessor.from_pretrained(saved_tiny_model)
    options = InferenceOptions(mode="slide", crop_size=48, stride=24, flip=True).with_input_size(64)
    rows = make_synthetic_dataset(train_size=2, eval_size=5, seed=3, min_size=40, max_size=72)["validation"]
    images = [row["image"].convert("RGB") for row in rows]
    predictions = predict_masks(model, images, eval_transform_for(processor, options), batch_size=2, options=options)
    metric = StreamingSegmentationMetric(num_labels=5)
    for prediction, row in zip(predictions, rows, strict=True):
        metric.update(prediction, torch.from_numpy(np.asarray(row["annotation"]).astype(np.int64)))
    assert metric.confusion.tolist() == results["confusion_matrix"]


def test_evaluate_refuses_data_with_another_number_of_classes(saved_tiny_model, saved_data, tmp_path, capsys):
    (tmp_path / "three.json").write_text(json.dumps({0: "a", 1: "b", 2: "c"}))
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main(["--model", str(saved_tiny_model), "--dataset_name", str(saved_data),
                       "--id2label_file", str(tmp_path / "three.json"), "--output_dir", str(tmp_path)])  # fmt: skip
    assert exit_info.value.code == 2
    assert "the data have 3 classes but the model has 5" in capsys.readouterr().err


SWAP = {0: 1, 1: 0}  # a label map that matters: raw background is class 1 ("disc"), raw 1 is class 0


@pytest.fixture(scope="module")
def swapped_model(saved_tiny_model, tmp_path_factory):
    """The tiny model's weights saved as `hfseg finetune --label_map '{"0": 1, "1": 0}'` saves a model."""
    from transformers import AutoConfig

    directory = tmp_path_factory.mktemp("swapped")
    for path in saved_tiny_model.iterdir():
        shutil.copy(path, directory / path.name)
    config = AutoConfig.from_pretrained(directory)
    LabelSpec({int(k): v for k, v in config.id2label.items()}, label_map=SWAP).save_to_config(config)
    config.save_pretrained(directory)
    return directory


def test_evaluate_reuses_the_label_map_saved_with_the_model(saved_tiny_model, swapped_model, saved_data, tmp_path):
    """Without the flag, a model trained with --label_map is scored as with it, not with raw values as classes."""
    _, saved = run_evaluate(swapped_model, saved_data, tmp_path / "saved")
    _, repeated = run_evaluate(swapped_model, saved_data, tmp_path / "repeated", "--label_map", json.dumps(SWAP))
    _, unmapped = run_evaluate(saved_tiny_model, saved_data, tmp_path / "unmapped")  # same weights, saved without it
    assert saved["confusion_matrix"] == repeated["confusion_matrix"]
    assert saved["eval_mean_iou"] == repeated["eval_mean_iou"]
    assert unmapped["confusion_matrix"] != repeated["confusion_matrix"], "the map changes the scores"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--label_map", '{"0": 0}'], "--label_map {0: 0} contradicts the model's label_map {0: 1, 1: 0}"),
        (["--reduce_labels", "true"], "--reduce_labels True contradicts the model's reduce_labels False"),
        (["--ignore_index", "0"], "--ignore_index 0 contradicts the model's ignore_index 255"),
    ],
)
def test_evaluate_refuses_a_flag_that_contradicts_the_saved_label_handling(
    swapped_model, saved_data, tmp_path, capsys, flags, message
):
    with pytest.raises(SystemExit) as exit_info:
        run_evaluate(swapped_model, saved_data, tmp_path, *flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and f"saved in {swapped_model / 'config.json'}" in error
    assert "Traceback" not in error


def test_evaluate_refuses_data_whose_class_names_are_not_the_models(saved_tiny_model, saved_data, tmp_path, capsys):
    (tmp_path / "names.json").write_text(json.dumps(["background", "disc", "box", "tree", "striped_ellipse"]))
    with pytest.raises(SystemExit) as exit_info:
        run_evaluate(saved_tiny_model, saved_data, tmp_path, "--id2label_file", str(tmp_path / "names.json"))
    assert exit_info.value.code == 2
    assert "the data call class 3 'tree' but the model" in capsys.readouterr().err
    same = ["Background", "disc", "box", "triangle", "striped_ellipse "]  # case and spaces aside: the same names
    (tmp_path / "names.json").write_text(json.dumps(same))
    run_evaluate(saved_tiny_model, saved_data, tmp_path, "--id2label_file", str(tmp_path / "names.json"))


def test_evaluate_on_shared_ade20k_samples(shared_data, tmp_path, capsys):
    """The two real ADE20K validation pairs (683x512, 500x364) in their own layout; 0 = other is reduced away."""
    from hfseg.data.adapters.ade20k_classes import ADE20K_CLASSES

    model = save_tiny_model(tmp_path / "model", dict(enumerate(ADE20K_CLASSES)))
    argv = [
        "--model",
        str(model),
        "--data_dir",
        str(shared_data / "ade20k"),
        "--layout",
        "ade20k",
        "--output_dir",
        str(tmp_path / "out"),
        "--eval_mode",
        "slide",
        "--eval_crop_size",
        "48",
        "--worst",
        "1",
    ]
    evaluate_main(argv)  # fmt: skip
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    masks = sorted((shared_data / "ade20k" / "ADEChallengeData2016" / "annotations" / "validation").glob("*.png"))
    labelled = sum(int((np.asarray(Image.open(mask)) != 0).sum()) for mask in masks)
    assert np.array(results["confusion_matrix"]).sum() == labelled
    assert results["num_images"] == 2 and len(results["eval_per_category_iou"]) == 150
    assert results["id2label"]["0"] == "wall"
    # --worst names the files of a local source, in eval_results.json and on stdout.
    (worst,) = results["worst_images"]
    image, mask = Path(worst["image"]), Path(worst["mask"])
    assert mask in masks and image.parent.name == "validation" and image.stem == mask.stem
    assert f"{worst['mean_iou']:.4f}  {image.name}" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("saved_model", ["saved_tiny_model", "saved_tiny_mask2former", "saved_tiny_oneformer"])
def test_two_processes_give_exactly_the_one_process_result(saved_model, saved_data, tmp_path, request):
    """5 images over 2 CPU processes (gloo): the sampler pads rank 1 with a duplicate that must not count."""
    model = request.getfixturevalue(saved_model)
    flags = ["--model", str(model), "--dataset_name", str(saved_data), "--per_device_eval_batch_size", "2",
             "--report_to", "none", "--worst", "5"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    outputs = {}
    for processes in (1, 2):
        output_dir = tmp_path / f"np{processes}"
        command = [*launch, "--num_processes", str(processes), "--main_process_port", str(_free_port()),
                   str(ROOT / "hfseg" / "evaluation" / "evaluate_model.py"), *flags,
                   "--output_dir", str(output_dir)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[processes] = json.loads((output_dir / "eval_results.json").read_text())
    one, two = outputs[1], outputs[2]
    assert np.array(one["confusion_matrix"]).sum() > 0
    assert two["confusion_matrix"] == one["confusion_matrix"]
    for key in RESULT_KEYS:
        np.testing.assert_array_equal(np.array(two[key], dtype=float), np.array(one[key], dtype=float), err_msg=key)
    assert two["worst_images"] == one["worst_images"], "per-image scores keep the data set's order"
    assert sorted(item["index"] for item in one["worst_images"]) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_finetune_eval_flags_give_the_same_numbers_as_hfseg_evaluate(tmp_path):
    """Training-time evaluation with --eval_mode slide + TTA == `hfseg evaluate` of the saved model, same flags,
    exactly: the reloaded weights get aligned memory (`own_aligned_storage`), so CPU kernels round as they did
    for the in-memory model (before that, one near-tie pixel in ~20,000 came out differently)."""
    from conftest import tiny_run_args

    from hfseg.finetune import main as finetune_main

    flags = ["--eval_mode", "slide", "--eval_crop_size", "48", "--eval_flip", "--eval_scales", "0.75", "1.0"]
    run = tmp_path / "run"
    metrics = finetune_main(tiny_run_args(run, "--max_steps", "1", "--synthetic_eval_size", "3", *flags))
    # Same batches as finetune's evaluation (batch size 4): batched float kernels may round differently otherwise.
    extra = ["--synthetic_eval_size", "3", "--per_device_eval_batch_size", "4", *flags]
    _, results = run_evaluate(run, "synthetic", tmp_path / "eval", *extra)
    for key in RESULT_KEYS:
        np.testing.assert_array_equal(np.array(results[key], dtype=float), np.array(metrics[key], dtype=float))
    assert (run / "predictions.png").is_file()


@pytest.mark.slow
def test_a_run_with_a_label_map_is_evaluated_and_predicted_with_it_without_the_flag(shared_data, tmp_path, capsys):
    """ISBI EM masks (0 = membrane, 255 = cell) trained with --label_map: `hfseg evaluate` without the flag gives
    the run's own final numbers, a contradicting flag stops it, `hfseg predict --label_values original` writes
    0/255, and the published files carry the label handling (config.json)."""
    from conftest import tiny_run_args

    from hfseg.evaluation.predict import main as predict_main
    from hfseg.finetune import main as finetune_main
    from hfseg.hub.push import files_to_push

    (tmp_path / "id2label.json").write_text(json.dumps({"0": "membrane", "1": "cell"}))
    em = shared_data / "isbi_em"
    data = ["--data_dir", str(em), "--layout", "folder", "--image_dir", "train/image", "--mask_dir", "train/label",
            "--id2label_file", str(tmp_path / "id2label.json")]  # fmt: skip
    run = tmp_path / "run"
    metrics = finetune_main(tiny_run_args(run, "--max_steps", "1", *data, "--label_map", '{"0": 0, "255": 1}'))
    saved = json.loads((run / "config.json").read_text())["hfseg_label_spec"]
    assert saved["label_map"] == {"0": 0, "255": 1} and saved["ignore_index"] == 255
    assert "config.json" in files_to_push(run)

    _, results = run_evaluate(run, "unused", tmp_path / "eval", *data, "--per_device_eval_batch_size", "4")
    for key in RESULT_KEYS:
        np.testing.assert_array_equal(np.array(results[key], dtype=float), np.array(metrics[key], dtype=float))
    with pytest.raises(SystemExit) as exit_info:
        run_evaluate(run, "unused", tmp_path / "eval", *data, "--label_map", '{"255": 1}')
    assert exit_info.value.code == 2
    assert "--label_map {255: 1} contradicts the model's label_map {0: 0, 255: 1}" in capsys.readouterr().err

    image = em / "train" / "image" / "0.png"
    predict_main(["--model", str(run), "--input", str(image), "--output", str(tmp_path / "raw"),
                  "--label_values", "original", "--no_overlays"])  # fmt: skip
    raw = np.asarray(Image.open(tmp_path / "raw" / "0.png"))
    assert raw.shape == (512, 512) and set(np.unique(raw).tolist()) <= {0, 255}


def test_evaluate_on_masks_without_labels_is_an_error_not_nan(saved_tiny_model, tmp_path, capsys):
    from datasets import Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    image = Image.fromarray(np.full((24, 32, 3), 128, dtype=np.uint8))
    unlabelled = Image.fromarray(np.full((24, 32), 255, dtype=np.uint8))
    features = Features({"image": ImageFeature(), "annotation": ImageFeature()})
    rows = Dataset.from_dict({"image": [image] * 2, "annotation": [unlabelled] * 2}, features=features)
    DatasetDict({"validation": rows}).save_to_disk(str(tmp_path / "data"))
    with pytest.raises(SystemExit) as exit_info:
        run_evaluate(saved_tiny_model, tmp_path / "data", tmp_path / "out")
    assert exit_info.value.code == 2
    assert "no labelled pixel in the 2 evaluated images" in capsys.readouterr().err
    assert not (tmp_path / "out" / "eval_results.json").exists()


def test_evaluate_names_a_pair_that_cannot_be_read(saved_tiny_model, tmp_path, capsys):
    """A cut JPEG among the evaluated pairs: one `hfseg: error:` line naming the file and the row, no traceback."""
    import io

    from hfseg.data.synthetic import SYNTHETIC_ID2LABEL

    data = tmp_path / "data"
    for folder in ("images", "masks"):
        (data / folder).mkdir(parents=True)
    mask = np.zeros((24, 32), dtype=np.uint8)
    for index in range(3):
        Image.fromarray(np.full((24, 32, 3), 40 * index, dtype=np.uint8)).save(data / "images" / f"p{index}.png")
        Image.fromarray(mask).save(data / "masks" / f"p{index}.png")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (data / "images" / "zz_cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.fromarray(mask).save(data / "masks" / "zz_cut.png")
    (data / "id2label.json").write_text(json.dumps({str(k): v for k, v in SYNTHETIC_ID2LABEL.items()}))
    flags = ["--data_dir", str(data), "--layout", "folder"]
    with pytest.raises(SystemExit) as exit_info:  # a held-out share that leaves no pair is named, not a traceback
        run_evaluate(saved_tiny_model, "unused", tmp_path / "out", *flags, "--validation_fraction", "1.0")
    assert exit_info.value.code == 2
    assert "--validation_fraction 1.0: the source has no validation split" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_evaluate(saved_tiny_model, "unused", tmp_path / "out", *flags, "--split", "train")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    (line,) = [line for line in error.splitlines() if line.startswith("hfseg: error:")]
    assert "zz_cut.jpg: cannot be read" in line and "row" in line
