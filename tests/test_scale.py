"""Beyond one process: the accelerate config examples parse, and `accelerate launch` with 2 CPU processes (gloo)
trains and saves a tiny model through hfseg/finetune.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, tiny_run_args

ACCELERATE_CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda path: path.stem)
def test_accelerate_config_examples_parse(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.compute_environment.value == "LOCAL_MACHINE"
    assert path.read_text().startswith("#"), "each example says what it is for"


def test_expected_examples_exist():
    assert {path.stem for path in ACCELERATE_CONFIGS} >= {
        "multi_gpu",
        "multi_node",
        "fsdp",
        "deepspeed_zero2",
        "cpu_2proc",
    }


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    output_dir = tmp_path / "out"
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"),
         str(ROOT / "hfseg" / "finetune.py"),
         *tiny_run_args(output_dir, "--max_steps", "3", "--per_device_train_batch_size", "2", "--report_to", "none"),
         "--use_cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert (output_dir / "model.safetensors").is_file()
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert 0.0 <= results["eval_mean_iou"] <= 1.0
    # 16 training images, 2 per process per step: 2 processes make an epoch in 4 steps (1 process: 8).
    assert results["epoch"] == pytest.approx(3 / 4), "the two processes did not split the data (DDP not active)"
