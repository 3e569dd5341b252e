"""Bad input through the real entry point: exit 2, one short line naming the file/field and the fix, no traceback.

One test per row of the README's Troubleshooting table (corrupt images: see `hfseg doctor`).
"""

import errno
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_run_args
from datasets import Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from safetensors.torch import save_file

from hfseg.config import parse_args
from hfseg.errors import HfsegError
from hfseg.finetune import main
from hfseg.training.checkpoints import (
    INCOMPLETE_MARKER,
    STAGING_DIR_NAME,
    latest_complete_checkpoint,
    mark_incomplete,
    prepare_output_dir,
)


def run_main(capsys, argv: list[str]) -> str:
    """`hfseg finetune argv` in-process; returns stderr after checking the one-line-error contract."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if "hfseg: error:" in line]
    assert len(lines) == 1, stderr[-2000:]
    # The data check lists its problems on the lines after the error line: they belong to the message.
    return stderr[stderr.index("hfseg: error:") :].split("(run again with --debug")[0]


def image(width: int, height: int, seed: int = 0) -> PILImage.Image:
    rng = np.random.default_rng(seed)
    return PILImage.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def mask(width: int, height: int, values=(0, 1, 2)) -> PILImage.Image:
    array = np.resize(np.array(values, dtype=np.uint8), (height, width))
    return PILImage.fromarray(array, mode="L")


def write_dataset(path, train_pairs, validation_pairs=None, num_labels: int = 3):
    """A local `save_to_disk` folder of (image, mask) pairs with an id2label.json beside the data."""
    features = Features({"image": Image(), "annotation": Image()})

    def split(pairs):
        return Dataset.from_dict({"image": [p[0] for p in pairs], "annotation": [p[1] for p in pairs]}, features)

    validation_pairs = train_pairs if validation_pairs is None else validation_pairs
    DatasetDict({"train": split(train_pairs), "validation": split(validation_pairs)}).save_to_disk(str(path))
    (path / "id2label.json").write_text(json.dumps({str(i): f"class_{i}" for i in range(num_labels)}))
    return path


def data_run_args(output_dir, dataset_dir, *extra: str) -> list[str]:
    args = tiny_run_args(output_dir, "--max_steps", "1", "--num_preview_images", "0", *extra)
    index = args.index("--dataset_name")
    args[index + 1] = str(dataset_dir)
    return args


# --- recipes and flags ---


def test_missing_recipe(capsys, tmp_path):
    line = run_main(capsys, ["--recipe", "nope", "--output_dir", str(tmp_path)])
    assert "recipe 'nope' not found" in line and "known recipes:" in line and "demo" in line


def test_unknown_recipe_key(capsys, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("dataset_name: synthetic\ncrop_sise: 96\n")
    line = run_main(capsys, ["--recipe", str(recipe), "--output_dir", str(tmp_path / "out")])
    assert "unknown key 'crop_sise'" in line and "mine.yaml" in line


def test_wrong_type_in_recipe(capsys, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("crop_size: large\n")
    line = run_main(capsys, ["--recipe", str(recipe), "--output_dir", str(tmp_path / "out")])
    assert "'crop_size' has value 'large'" in line and "expected int" in line


def test_wrong_type_flag_is_one_line_not_the_usage(capsys, tmp_path):
    line = run_main(capsys, ["--crop_size", "large", "--output_dir", str(tmp_path)])
    assert "--crop_size" in line and "'large'" in line and "--help" in line


def test_unknown_flag(capsys, tmp_path):
    line = run_main(capsys, ["--crop_sise", "96", "--output_dir", str(tmp_path)])
    assert "--crop_sise" in line and "--help" in line


# --- data ---


def test_dataset_not_found_local_path(capsys, tmp_path):
    missing = tmp_path / "no_such_folder"
    line = run_main(capsys, tiny_run_args(tmp_path / "out", "--dataset_name", str(missing)))
    assert f"--dataset_name {missing}" in line and "no such local folder" in line and "--data_dir" in line


def test_dataset_not_found_on_hub_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = run_main(capsys, tiny_run_args(tmp_path / "out", "--dataset_name", "someone/no_such_dataset"))
    assert "someone/no_such_dataset" in line and "HF_HUB_OFFLINE=1" in line


def test_no_mask_column(capsys, tmp_path):
    dataset_dir = tmp_path / "data"
    Dataset.from_dict(
        {"image": [image(32, 32)], "caption": ["a picture"]}, Features({"image": Image(), "caption": Value("string")})
    ).save_to_disk(str(dataset_dir))
    line = run_main(capsys, data_run_args(tmp_path / "out", dataset_dir))
    assert "cannot tell the image and mask columns apart" in line and "--label_column" in line


def test_named_column_missing(capsys, tmp_path):
    dataset_dir = write_dataset(tmp_path / "data", [(image(32, 32), mask(32, 32))])
    line = run_main(capsys, data_run_args(tmp_path / "out", dataset_dir, "--label_column", "segmentation"))
    assert "column 'segmentation' (--label_column) not found" in line and "annotation" in line


def test_mask_size_differs_from_image(capsys, tmp_path):
    dataset_dir = write_dataset(tmp_path / "data", [(image(48, 32), mask(40, 30))] * 4)
    line = run_main(capsys, data_run_args(tmp_path / "out", dataset_dir))
    assert "mask is 40x30" in line and "48x32" in line and "fix or remove the pair" in line


def test_label_values_out_of_range(capsys, tmp_path):
    dataset_dir = write_dataset(tmp_path / "data", [(image(32, 32), mask(32, 32, values=(0, 1, 9)))] * 4)
    line = run_main(capsys, data_run_args(tmp_path / "out", dataset_dir))
    assert "label values [9]" in line and "num_labels=3" in line and "id2label" in line


def test_empty_split(capsys, tmp_path):
    # (datasets cannot reload an empty split it saved itself, so the split is emptied by a cap)
    line = run_main(capsys, tiny_run_args(tmp_path / "out", "--max_train_samples", "0"))
    assert "the train split is empty" in line and "--train_split" in line


def test_missing_split(capsys, tmp_path):
    line = run_main(capsys, tiny_run_args(tmp_path / "out", "--train_split", "training"))
    assert "split 'training' not found" in line and "--train_split" in line


# --- model ---


def test_checkpoint_that_is_not_a_segmentation_model(capsys, tmp_path):
    from transformers import BertConfig

    checkpoint = tmp_path / "bert"
    config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8)
    config.save_pretrained(checkpoint)
    args = tiny_run_args(tmp_path / "out", "--model_name_or_path", str(checkpoint))
    args = [arg for arg in args if arg not in ("--model_type", "segformer")]
    line = run_main(capsys, args)
    assert "is a 'bert' checkpoint, not a semantic-segmentation model" in line and "segformer" in line


def test_model_path_that_does_not_exist(capsys, tmp_path):
    args = tiny_run_args(tmp_path / "out", "--model_name_or_path", str(tmp_path / "no_model"))
    args = [arg for arg in args if arg not in ("--model_type", "segformer")]
    line = run_main(capsys, args)
    assert f"--model_name_or_path {tmp_path / 'no_model'}" in line and "--model_type" in line


# --- output dir ---


def test_output_dir_holding_another_run_is_refused_and_left_intact(capsys, tmp_path):
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-2").mkdir(parents=True)
    saved = {"hfseg_config.yaml": "max_steps: 2\n", "model.safetensors": "w1", "checkpoint-2/model.safetensors": "w2"}
    for name, text in saved.items():
        (output_dir / name).write_text(text)
    line = run_main(capsys, tiny_run_args(output_dir))
    assert f"--output_dir {output_dir} already holds a run" in line
    assert "--resume_from_checkpoint auto" in line and "--overwrite_output_dir" in line
    for name, text in saved.items():
        assert (output_dir / name).read_text() == text
    assert not (output_dir / INCOMPLETE_MARKER).exists()


def test_overwrite_output_dir_and_resume_are_allowed(tmp_path):
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-2").mkdir(parents=True)
    save_file({"weight": torch.zeros(2)}, str(output_dir / "checkpoint-2" / "model.safetensors"))
    (output_dir / "checkpoint-2" / "trainer_state.json").write_text("{}")
    *_, training_args = parse_args(tiny_run_args(output_dir, "--overwrite_output_dir"))
    assert prepare_output_dir(training_args) is None
    *_, training_args = parse_args(tiny_run_args(output_dir, "--resume_from_checkpoint", "auto"))
    assert prepare_output_dir(training_args) == str(output_dir / "checkpoint-2")
    assert not (output_dir / INCOMPLETE_MARKER).exists()  # checks write nothing
    mark_incomplete(training_args)
    assert (output_dir / INCOMPLETE_MARKER).exists()


# --- --debug ---


@pytest.mark.slow
def test_debug_flag_gives_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "hfseg" / "finetune.py"), "--recipe", "nope", "--output_dir", str(tmp_path),
         "--debug"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "HfsegError: recipe 'nope' not found" in result.stderr


def test_debug_in_process_raises(tmp_path):
    with pytest.raises(HfsegError, match="recipe 'nope' not found"):
        main(["--recipe", "nope", "--output_dir", str(tmp_path), "--debug"])


# --- training goes wrong ---


def test_nan_loss_stops_with_step_and_learning_rate(capsys, tmp_path):
    args = tiny_run_args(
        tmp_path / "out", "--optim", "sgd", "--learning_rate", "1e30", "--max_grad_norm", "0",
        "--lr_scheduler_type", "constant",
    )  # fmt: skip
    line = run_main(capsys, args)
    assert re.search(r"training loss is (nan|inf) at step [23] \(learning rate 1e\+30\)", line), line
    assert "lower --learning_rate" in line


def test_nan_loss_between_log_steps_stops_before_a_checkpoint(capsys, tmp_path):
    args = tiny_run_args(
        tmp_path / "out", "--optim", "sgd", "--learning_rate", "1e30", "--max_grad_norm", "0",
        "--lr_scheduler_type", "constant", "--logging_steps", "50", "--save_strategy", "steps", "--save_steps", "3",
    )  # fmt: skip
    line = run_main(capsys, args)
    assert re.search(r"training loss is (nan|inf) at step [23] \(learning rate 1e\+30\)", line), line
    assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_no_space_left_on_save_keeps_earlier_checkpoint(capsys, tmp_path, monkeypatch):
    import transformers.modeling_utils

    real_save = transformers.modeling_utils.safe_save_file
    calls = []

    def save_until_disk_is_full(*args, **kwargs):
        calls.append(args[1])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_until_disk_is_full)
    output_dir = tmp_path / "out"
    line = run_main(capsys, tiny_run_args(output_dir, "--save_strategy", "steps", "--save_steps", "2"))
    assert "no space left on the device while saving checkpoint checkpoint-4" in line
    assert "--resume_from_checkpoint auto" in line
    assert latest_complete_checkpoint(output_dir) == output_dir / "checkpoint-2"
    assert not (output_dir / "checkpoint-4").exists() and not (output_dir / STAGING_DIR_NAME).exists()
    assert (output_dir / INCOMPLETE_MARKER).exists()


def test_recipe_yaml_is_loaded_safely(capsys, tmp_path):
    recipe = tmp_path / "evil.yaml"
    recipe.write_text("crop_size: !!python/object/apply:os.system ['echo pwned']\n")
    line = run_main(capsys, ["--recipe", str(recipe), "--output_dir", str(tmp_path / "out")])
    assert "evil.yaml is not valid YAML" in line


def test_remote_code_is_off_by_default():
    model_args, _, _ = parse_args(["--model_type", "segformer"])
    assert model_args.trust_remote_code is False


# --- where outputs go ---


def test_output_dir_that_is_a_file_is_refused_before_loading(capsys, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    line = run_main(capsys, tiny_run_args(blocker / "run"))
    assert f"--output_dir {blocker / 'run'}: {blocker} is a file, not a folder" in line
    assert blocker.read_text() == "a file"


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (root ignores chmod, not a read-only mount); skipped where mounting is not allowed."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def test_read_only_output_dir_is_refused_before_loading(capsys, read_only_dir):
    line = run_main(capsys, tiny_run_args(read_only_dir / "run"))
    assert f"--output_dir {read_only_dir / 'run'}: cannot write in {read_only_dir} (Read-only file system)" in line


def test_doctor_plot_into_a_bad_path_fails_before_the_scan(capsys, tmp_path, read_only_dir):
    from hfseg.data.doctor import main as doctor_main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    for plot, expected in [
        (blocker / "chart.png", f"--plot {blocker}: {blocker} is a file, not a folder"),
        (read_only_dir / "charts" / "chart.png", f"cannot write in {read_only_dir} (Read-only file system)"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            doctor_main(["--dataset_name", "synthetic", "--plot", str(plot)])
        captured = capsys.readouterr()
        assert exit_info.value.code == 2 and "Traceback" not in captured.err
        assert expected in captured.err and captured.out == ""  # no report: the scan never ran


def test_num_channels_without_one_mean_per_band_is_refused_with_the_fix(capsys, tmp_path):
    message = run_main(capsys, [*tiny_run_args(tmp_path / "out"), "--num_channels", "4"])
    expected = "--num_channels 4: image_mean has 3 values [0.485, 0.456, 0.406]; give --image_mean with 4 values"
    assert expected in message
    assert "`hfseg doctor --stats`" in message
    flags = ["--num_channels", "2", "--image_mean", "0.1", "0.2", "--image_std", "0.3"]
    message = run_main(capsys, [*tiny_run_args(tmp_path / "out2"), *flags])
    assert "--num_channels 2: image_std has 1 values [0.3]; give --image_std with 2 values" in message
