"""Images that are not 3-channel RGB end to end: a 4-band 16-bit TIFF folder trains (`--num_channels 4`, per-band
`--image_mean`/`--image_std`), `hfseg evaluate` and `hfseg predict` serve the saved run, and its pipeline takes a
4-band input; the real 1-channel EM images train with `--num_channels 1`."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import MULTIBAND_ID2LABEL, ROOT, tiny_run_args, write_multiband_folder
from PIL import Image

#: `hfseg doctor --stats` of the fixture's train split (in [0, 1] units of 16 bits).
MULTIBAND_MEAN = ["0.0113874", "0.0271619", "0.0254803", "0.0259211"]
MULTIBAND_STD = ["0.0094951", "0.0121164", "0.0108393", "0.00437805"]


def folder_run_args(output_dir, data_flags: list[str], *extra: str) -> list[str]:
    """tiny_run_args on a folder data set, 2 steps of batch 2."""
    args = tiny_run_args(output_dir, "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2")
    start = args.index("--dataset_name")
    del args[start : start + 2]
    args[args.index("--max_steps") + 1] = "2"
    return [*args, *data_flags, *extra]


def run_finetune(args: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hfseg" / "finetune.py"), *args], capture_output=True, text=True, cwd=ROOT,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def losses_of(log: str) -> list[float]:
    return [float(value) for value in re.findall(r"'loss': '([-0-9.e]+)'", log)]


@pytest.fixture(scope="module")
def multiband_run(tmp_path_factory):
    root = write_multiband_folder(tmp_path_factory.mktemp("multiband") / "data")
    data_flags = ["--data_dir", str(root), "--layout", "folder", "--id2label_file", str(root / "id2label.json")]
    output_dir = root.parent / "out"
    log = run_finetune(
        folder_run_args(
            output_dir, data_flags, "--num_channels", "4",
            "--image_mean", *MULTIBAND_MEAN, "--image_std", *MULTIBAND_STD,
        )
    )  # fmt: skip
    return root, data_flags, output_dir, log


@pytest.mark.slow
def test_four_band_16bit_tiffs_train_and_save_the_band_normalisation(multiband_run):
    _, _, output_dir, log = multiband_run
    losses = losses_of(log)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), losses
    assert json.loads((output_dir / "config.json").read_text())["num_channels"] == 4
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [float(v) for v in MULTIBAND_MEAN]
    assert processor["image_std"] == [float(v) for v in MULTIBAND_STD]
    assert Image.open(output_dir / "predictions.png").mode in ("RGB", "RGBA")  # bands previewed as RGB


@pytest.mark.slow
def test_hfseg_evaluate_scores_the_four_band_run_as_training_did(multiband_run, tmp_path):
    from hfseg.evaluation.evaluate_model import main as evaluate_main

    _, data_flags, output_dir, _ = multiband_run
    trained = json.loads((output_dir / "eval_results.json").read_text())
    evaluate_main(["--model", str(output_dir), *data_flags, "--output_dir", str(tmp_path), "--report_to", "none",
                   "--worst", "1"])  # fmt: skip
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["num_images"] == 2 and results["id2label"] == MULTIBAND_ID2LABEL
    assert results["eval_mean_iou"] == pytest.approx(trained["eval_mean_iou"], abs=1e-6)
    assert (tmp_path / "worst_images.png").is_file()


@pytest.mark.slow
def test_predict_and_pipeline_take_four_band_images_and_agree(multiband_run, tmp_path):
    from hfseg.evaluation.pipeline import segmentation_pipeline
    from hfseg.evaluation.predict import main as predict_main

    root, _, output_dir, _ = multiband_run
    images = root / "images" / "val"
    written = predict_main(["--model", str(output_dir), "--input", str(images), "--output", str(tmp_path / "pred")])
    assert sorted(path.name for path in written) == ["000.png", "001.png"]
    assert (tmp_path / "pred" / "overlays" / "000.png").is_file()
    predicted = np.asarray(Image.open(written[0]))
    assert predicted.shape == (64, 64) and set(np.unique(predicted)) <= {0, 1, 2}

    segmenter = segmentation_pipeline(str(output_dir))
    label_ids = {name: int(index) for index, name in MULTIBAND_ID2LABEL.items()}
    bands = tifffile.imread(images / "000.tif")  # (64, 64, 4) uint16
    for given in (bands, str(images / "000.tif")):  # an array and a file path
        segments = segmenter(given)
        mask = np.full((64, 64), -1)
        for segment in segments:
            mask[np.asarray(segment["mask"]) > 0] = label_ids[segment["label"]]
        np.testing.assert_array_equal(mask, predicted)  # the saved per-band normalisation, both ways


@pytest.mark.slow
def test_real_em_images_train_with_one_channel(shared_data, tmp_path):
    id2label_file = tmp_path / "id2label.json"
    id2label_file.write_text(json.dumps({"0": "membrane", "1": "cell"}))
    data_flags = [
        "--data_dir", str(shared_data / "isbi_em" / "train"), "--layout", "folder",
        "--label_map", '{"0": 0, "255": 1}', "--id2label_file", str(id2label_file),
    ]  # fmt: skip
    output_dir = tmp_path / "out"
    log = run_finetune(folder_run_args(output_dir, data_flags, "--num_channels", "1"))
    losses = losses_of(log)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses), losses
    assert json.loads((output_dir / "config.json").read_text())["num_channels"] == 1
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    # One band from the RGB defaults: their average (timm's rule).
    assert processor["image_mean"] == [pytest.approx(sum([0.485, 0.456, 0.406]) / 3)]
    assert len(processor["image_std"]) == 1
    assert 0.0 <= json.loads((output_dir / "eval_results.json").read_text())["eval_mean_iou"] <= 1.0
