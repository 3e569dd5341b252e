"""Reading one pair: a file the user may not read, and an EXIF orientation that turns the image away from its mask."""

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY_SEGFORMER, save_tiny_model
from PIL import Image

from hfseg.data.checks import inspect_pair
from hfseg.data.labels import LabelSpec, MaskError
from hfseg.data.preprocess import encode_pair

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # <linux/prctl.h>, <linux/capability.h>


def test_exif_orientation_that_contradicts_the_mask_is_named(tmp_path):
    """A JPEG stored 32x24 with EXIF orientation 6 shows as 24x32; its mask matches the stored 32x24 pixels."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(np.zeros((24, 32, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", exif=exif.tobytes())
    Image.fromarray(np.zeros((24, 32), dtype=np.uint8)).save(tmp_path / "photo.png")
    image, mask = str(tmp_path / "photo.jpg"), str(tmp_path / "photo.png")
    spec = LabelSpec({0: "background", 1: "road"})
    _, _, _, problems = inspect_pair(image, mask, spec, "row 0")
    (problem,) = problems
    assert problem.kind == "size_mismatch" and problem.file == mask
    assert "its EXIF orientation tag (6: rotated 90° clockwise) makes it 24x32" in problem.found
    assert "the mask matches the stored pixels (32x24)" in problem.found
    assert f"exiftool -Orientation= {image}" in problem.fix and "rotate the mask" in problem.fix
    with pytest.raises(MaskError) as raised:  # training reading the same pair says the same
        encode_pair(Image.open(image), Image.open(mask), spec)
    assert str(raised.value) == str(problem)
    Image.fromarray(np.zeros((20, 30), dtype=np.uint8)).save(tmp_path / "other.png")  # matches neither way
    (problem,) = inspect_pair(image, str(tmp_path / "other.png"), spec, "row 0")[3]
    assert "EXIF" not in str(problem) and "pixel for pixel" in problem.fix


def run_without_override(argv: list[str]) -> subprocess.CompletedProcess:
    """`argv` in a subprocess whose root user lacks the capabilities to read any file whatever its mode
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, dropped from the bounding set): `chmod 000` stops it as any user."""
    libc = ctypes.CDLL(None, use_errno=True)

    def drop_read_override():
        for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return subprocess.run(
        argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=drop_read_override, timeout=900,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="capabilities are Linux's")
def test_unreadable_file_says_permission_denied_in_doctor_training_and_predict(tmp_path):
    data = tmp_path / "data"
    for folder in ("images", "masks"):
        (data / folder).mkdir(parents=True)
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[:, 16:] = 1
    for name in ("a", "b", "c", "locked"):
        Image.fromarray(np.full((24, 32, 3), 60, dtype=np.uint8)).save(data / "images" / f"{name}.png")
        Image.fromarray(mask).save(data / "masks" / f"{name}.png")
    (data / "id2label.json").write_text(json.dumps({"0": "background", "1": "road"}))
    save_tiny_model(tmp_path / "model", {0: "background", 1: "road"}, image_size=32)
    locked = data / "images" / "locked.png"
    locked.chmod(0o000)
    probe = run_without_override([sys.executable, "-c", f"open({str(locked)!r}).close()"])
    assert "PermissionError" in probe.stderr, probe.stderr  # the file is really unreadable to the commands below

    doctor = run_without_override(
        [sys.executable, "-m", "hfseg.cli", "doctor", "--data_dir", str(data), "--layout", "folder", "--no_progress"]
    )
    assert doctor.returncode == 1, doctor.stderr[-3000:]
    (line,) = [line for line in doctor.stdout.splitlines() if str(locked) in line]
    assert line.startswith("  [permission]") and "permission denied" in line and "chmod a+r" in line, line

    finetune = run_without_override(
        [sys.executable, str(ROOT / "hfseg" / "finetune.py"), "--model_type", "segformer",
         "--config_overrides", json.dumps(TINY_SEGFORMER), "--data_dir", str(data), "--layout", "folder",
         "--validation_fraction", "0.25", "--max_steps", "1", "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    assert finetune.returncode == 2, finetune.stderr[-3000:]
    assert "Traceback" not in finetune.stderr
    assert f"{locked}: permission denied" in finetune.stderr and "corrupt" not in finetune.stderr

    predict = run_without_override(
        [sys.executable, "-m", "hfseg.cli", "predict", "--model", str(tmp_path / "model"), "--input",
         str(data / "images"), "--output", str(tmp_path / "predictions")]
    )  # fmt: skip
    assert predict.returncode == 2, predict.stderr[-3000:]
    (line,) = [line for line in predict.stderr.splitlines() if line.startswith("hfseg: error:")]
    assert "1 of 4 images could not be read" in line and f"{locked}: permission denied" in line, line
    written = sorted(path.name for path in (tmp_path / "predictions").glob("*.png"))
    assert written == ["a.png", "b.png", "c.png"]
