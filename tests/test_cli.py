"""`hfseg` starts without torch: the package's re-exports are lazy, and `hfseg --help`, `hfseg doctor` and errors in
hfseg's own flags answer before torch is imported (startup times: benchmarks/startup.py)."""

import json
import os
import subprocess
import sys

import hfseg

NO_TORCH_RUN = """
import json, sys
from hfseg.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exit:
        codes.append(exit.code)
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules, "transformers_training": any(
    name.startswith("transformers.training_args") for name in sys.modules)}))
"""


def test_help_doctor_and_flag_errors_answer_without_torch(shared_data, tmp_path):
    id2label = tmp_path / "id2label.json"
    id2label.write_text(json.dumps({"0": "membrane", "1": "cell"}))
    doctor = ["doctor", "--data_dir", str(shared_data / "isbi_em"), "--layout", "folder", "--no_progress"]
    runs = [
        ["--help"],
        ["doctor", "--help"],
        [*doctor, "--id2label_file", str(id2label), "--label_map", '{"0": 0, "255": 1}'],  # 255 = cell
        ["finetune", "--crop_size", "large"],
        ["finetune", "--loss", "ce:1,lovasz:x"],
    ]
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_RUN, json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 0, 0, 2, 2], "torch": False, "transformers_training": False}, result.stderr
    assert "image sizes: all 512x512" in result.stdout
    assert "--crop_size/--crop-size: invalid int value: 'large'" in result.stderr
    assert "weight 'x' of lovasz is not a number" in result.stderr


def test_public_names_load_on_first_use():
    from hfseg import (
        DataArguments,
        LabelSpec,
        SegTrainer,
        SegTrainingArguments,
        StreamingSegmentationMetric,
        compute_segmentation_metrics,
    )
    from hfseg.config import DataArguments as config_data_arguments
    from hfseg.data.labels import LabelSpec as labels_label_spec
    from hfseg.evaluation import metrics
    from hfseg.training.arguments import SegTrainingArguments as training_arguments
    from hfseg.training.trainer import SegTrainer as trainer_class

    assert DataArguments is config_data_arguments and LabelSpec is labels_label_spec
    assert StreamingSegmentationMetric is metrics.StreamingSegmentationMetric
    assert compute_segmentation_metrics is metrics.compute_segmentation_metrics
    assert SegTrainer is trainer_class and SegTrainingArguments is training_arguments
    assert all(getattr(hfseg, name) is not None for name in hfseg.__all__)
    assert set(hfseg.__all__) <= set(dir(hfseg))
    try:
        hfseg.NotAName  # noqa: B018
    except AttributeError as error:
        assert "NotAName" in str(error)
    else:
        raise AssertionError("hfseg.NotAName should raise AttributeError")
