"""Training's own reading of pairs: a pair that breaks past the pre-training check is named, or skipped and listed."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_SEGFORMER
from PIL import Image

from hfseg.config import DataArguments
from hfseg.data.adapters import build_label_spec, load_source
from hfseg.data.doctor import check_source
from hfseg.data.preprocess import BadPair, attach_transform, report_skipped
from hfseg.data.transforms import EvalTransform

MASK = np.zeros((24, 32), dtype=np.uint8)
MASK[:, 16:] = 1


@pytest.fixture
def late_break(tmp_path):
    """A folder data set of 8 good pairs, then (by name) one whose JPEG is cut in half: past `--check_samples 2`."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for index in range(8):
        pixels = np.random.default_rng(index).integers(0, 255, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"good{index}.png")
        Image.fromarray(MASK).save(tmp_path / "masks" / f"good{index}.png")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(9).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "images" / "zz_cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.fromarray(MASK).save(tmp_path / "masks" / "zz_cut.png")
    (tmp_path / "id2label.json").write_text(json.dumps({"0": "background", "1": "road"}))
    return tmp_path


def checked_splits(data_dir, skipped_file=None):
    data_args = DataArguments(data_dir=str(data_dir), layout="folder", validation_fraction=0.25, check_samples=2)
    source = load_source(data_args)
    spec = build_label_spec(source, data_args)
    check_source(source, spec, data_args)  # the first 2 pairs per split are fine: the check passes
    transform = EvalTransform(None, (0.5,) * 3, (0.5,) * 3)
    columns = (source.image_column, source.label_column)
    return {
        split: attach_transform(source.dataset[split], *columns, spec, transform, split, skipped_file)
        for split in ("train", "validation")
    }


def test_pair_broken_past_the_check_names_file_row_and_fixes(late_break):
    raised = []
    for split, dataset in checked_splits(late_break).items():
        for index in range(len(dataset)):
            try:
                assert dataset[index]["labels"].shape == (24, 32)
            except BadPair as error:
                raised.append((split, index, str(error)))
    ((split, index, message),) = raised
    assert message.startswith(f"{split} row {index}: {late_break / 'images' / 'zz_cut.jpg'}: cannot be read")
    assert "--skip_bad_samples" in message and "--check_samples -1" in message and "\n" not in message
    loader = torch.utils.data.DataLoader(checked_splits(late_break)[split], batch_size=None, num_workers=1)
    with pytest.raises(BadPair) as from_worker:  # --dataloader_num_workers 1: the same one line
        list(loader)
    assert str(from_worker.value) == message


def test_skip_bad_samples_replaces_the_pair_and_lists_it(late_break, tmp_path, caplog):
    listing = tmp_path / "skipped_samples.txt"
    splits = checked_splits(late_break, listing)
    for _ in range(2):  # two epochs: listed once
        for dataset in splits.values():
            assert all(dataset[index]["labels"].shape == (24, 32) for index in range(len(dataset)))
    stand_ins = {
        name: [dataset[position]["labels"] for position in dataset.skipped] for name, dataset in splits.items()
    }
    assert sum(len(labels) for labels in stand_ins.values()) == 1
    for name, labels in stand_ins.items():  # a validation stand-in is scored nowhere: all its pixels are ignored
        assert all((label == 255).all() if name != "train" else (label != 255).any() for label in labels)
    with caplog.at_level("WARNING"):
        (line,) = report_skipped(listing)
    assert line.split("\t")[1] == str(late_break / "images" / "zz_cut.jpg") and "row" in line.split("\t")[0]
    assert "1 pair(s) skipped" in caplog.text and "zz_cut.jpg" in caplog.text


@pytest.mark.slow
def test_finetune_names_a_late_broken_pair_or_skips_it(late_break, tmp_path):
    """The entry script, as users run it: one `hfseg: error:` line, no traceback; then a run that skips the pair."""
    argv = [
        sys.executable, str(ROOT / "hfseg" / "finetune.py"), "--model_type", "segformer",
        "--config_overrides", json.dumps(TINY_SEGFORMER), "--image_size", "32", "--crop_size", "32",
        "--data_dir", str(late_break), "--layout", "folder", "--validation_fraction", "0.25", "--check_samples", "0",
        "--max_steps", "3", "--per_device_train_batch_size", "3", "--eval_strategy", "no", "--save_strategy", "no",
        "--num_preview_images", "0", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    failed = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert "Traceback" not in failed.stderr
    (line,) = [line for line in failed.stderr.splitlines() if line.startswith("hfseg: error:")]
    assert "row" in line and "zz_cut.jpg" in line and "--skip_bad_samples" in line and "--check_samples -1" in line
    done = subprocess.run([*argv, "--skip_bad_samples", "--overwrite_output_dir"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    listed = (tmp_path / "out" / "skipped_samples.txt").read_text().splitlines()
    assert len(listed) == 1 and "zz_cut.jpg" in listed[0]
    assert "1 pair(s) skipped during the run" in done.stderr


def test_streamed_pair_that_cannot_be_read_is_named_or_left_out(late_break, tmp_path):
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    from hfseg.data.labels import LabelSpec

    names = sorted(path.stem for path in (late_break / "images").iterdir())
    images = [str(next((late_break / "images").glob(f"{name}.*"))) for name in names]
    masks = [str(late_break / "masks" / f"{name}.png") for name in names]
    features = Features({"image": ImageFeature(), "annotation": ImageFeature()})
    stream = Dataset.from_dict({"image": images, "annotation": masks}, features=features).to_iterable_dataset()
    spec = LabelSpec({0: "background", 1: "road"})
    transform = EvalTransform(None, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(BadPair) as raised:
        list(attach_transform(stream, "image", "annotation", spec, transform, "train"))
    assert str(raised.value).startswith(f"train streamed row 8: {late_break / 'images' / 'zz_cut.jpg'}: cannot be")
    listing = tmp_path / "skipped.txt"
    examples = list(attach_transform(stream, "image", "annotation", spec, transform, "train", listing))
    assert len(examples) == 8 and "zz_cut.jpg" in listing.read_text()
