"""Benchmarks stay runnable: each script runs with --quick; the eval baseline's formula is checked by hand."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def eval_memory_module():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import eval_memory

        yield eval_memory
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_evaluate_style_mean_iou_matches_hand_worked_numbers(eval_memory_module):
    # Classes 0..2, 255 ignored. Image 1: truth [0 0 1 255], pred [0 1 1 2]; image 2: truth [2 2], pred [2 0].
    predictions = [np.array([[0, 1], [1, 2]]), np.array([[2, 0]])]
    references = [np.array([[0, 0], [1, 255]]), np.array([[2, 2]])]
    result = eval_memory_module.evaluate_style_mean_iou(predictions, references, num_labels=3, ignore_index=255)
    # class 0: intersect 1, pred 2, label 2 -> 1/3; class 1: 1, 2, 1 -> 1/2; class 2: 1, 1, 2 -> 1/2
    np.testing.assert_allclose(result["per_category_iou"], [1 / 3, 1 / 2, 1 / 2])
    np.testing.assert_allclose(result["per_category_accuracy"], [1 / 2, 1, 1 / 2])
    assert result["overall_accuracy"] == pytest.approx(3 / 5)
    assert result["mean_iou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2) / 3)


def test_evaluate_style_mean_iou_agrees_with_hfseg_metrics(eval_memory_module):
    from hfseg.evaluation.metrics import compute_segmentation_metrics

    rng = np.random.default_rng(0)
    references = [rng.integers(0, 6, size=(9, 11)) for _ in range(3)]
    for reference in references:
        reference[rng.random(reference.shape) < 0.1] = 255
    predictions = [rng.integers(0, 5, size=reference.shape) for reference in references]  # class 5 never predicted
    baseline = eval_memory_module.evaluate_style_mean_iou(predictions, references, num_labels=6, ignore_index=255)
    ours = compute_segmentation_metrics(predictions, references, num_labels=6, ignore_index=255)
    np.testing.assert_allclose(baseline["per_category_iou"], ours["per_category_iou"])
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        assert baseline[key] == pytest.approx(ours[key])


def test_memory_growth_fits_a_line(eval_memory_module):
    results = [{"n": n, "peak_rss_mb": 800 + 170 * n} for n in (5, 10, 20)]
    fit = eval_memory_module.memory_growth(results)
    assert fit["mb_per_image"] == pytest.approx(170)
    assert fit["at_500_mb"] == pytest.approx(800 + 170 * 500)
    assert eval_memory_module.memory_growth(results[:1]) is None


def test_failed_allocation_size_is_read_from_torch_and_numpy_errors(eval_memory_module):
    import torch

    too_big = 2**50  # 1 PiB: refused by any machine's allocator
    with pytest.raises(RuntimeError) as torch_error:
        torch.empty(too_big, dtype=torch.uint8)
    assert eval_memory_module.failed_allocation_bytes(torch_error.value) == too_big
    with pytest.raises(MemoryError) as numpy_error:
        np.empty(too_big // 4, dtype=np.float32)
    assert eval_memory_module.failed_allocation_bytes(numpy_error.value) == too_big
    assert eval_memory_module.failed_allocation_bytes(RuntimeError("shape mismatch")) is None


def test_a_baseline_that_failed_to_allocate_is_reported_as_a_lower_bound(eval_memory_module):
    ours = {"method": "ours", "n": 500, "completed": True, "peak_rss_mb": 1700.0, "eval_s": 700.0}
    failed = {
        "method": "baseline",
        "n": 500,
        "completed": False,
        "peak_rss_mb": 9000.0,
        "failed_allocation_bytes": 80 * 2**30,
        "eval_s_until_failure": 650.0,
    }
    assert eval_memory_module.peak_lower_bound_mb(ours) == 1700.0
    failed["peak_lower_bound_mb"] = eval_memory_module.peak_lower_bound_mb(failed)
    assert failed["peak_lower_bound_mb"] == 80 * 1024  # the allocation it asked for exceeds its peak so far
    row = eval_memory_module.table_row(500, [ours, failed])
    assert row[2].startswith(">= 81920") and "80.0 GiB" in row[2]
    assert f"{80 * 1024 / 1700:.1f}x lower" in row[3]
    assert row[5] == "> 650.0 (failed)"  # no time ratio is claimed for a run that did not finish


def run_quick(name: str, tmp_path) -> dict:
    output = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "ours" in completed.stdout or "hfseg" in completed.stdout
    assert "machine:" in completed.stdout and "|" in completed.stdout  # machine line and table printed
    document = json.loads(output.read_text())
    assert document["benchmark"] == name and document["quick"] is True
    assert document["machine"]["device"] == "cpu" and document["machine"]["torch"]
    for result in document["results"]:
        assert "error" not in result, result
        assert result["torch_threads"] >= 1 and result["peak_rss_mb_shared"] > 100
    assert document["table"]["rows"]
    return document


@pytest.mark.slow
def test_eval_memory_quick(tmp_path):
    document = run_quick("eval_memory", tmp_path)
    by_method = {result["method"]: result for result in document["results"]}
    assert set(by_method) == {"ours", "baseline"}
    for result in by_method.values():
        assert result["n"] == 4 and result["eval_s"] > 0
        assert 0 <= result["eval_mean_iou"] <= 1 and not math.isnan(result["eval_mean_iou"])


@pytest.mark.slow
def test_train_overhead_quick(tmp_path):
    document = run_quick("train_overhead", tmp_path)
    (result,) = document["results"]
    assert result["steps_measured_per_method"] == 3
    assert result["bare_s_per_step"] > 0 and result["ours_s_per_step"] > 0


@pytest.mark.slow
def test_dataloader_quick(tmp_path):
    document = run_quick("dataloader", tmp_path)
    methods = [result["method"] for result in document["results"]]
    assert methods == ["train_step", "ours", "guide"]
    for result in document["results"][1:]:
        assert result["batch_shape"] == [2, 3, 32, 32] and result["images_per_s"] > 0


@pytest.mark.slow
def test_inference_quick(tmp_path):
    document = run_quick("inference", tmp_path)
    assert [result["method"] for result in document["results"]][:2] == ["pipeline", "hfseg"]
    assert "whole" in document["modes"]
    for result in document["results"]:
        assert result["images"] == 4 and result["images_per_s"] > 0


@pytest.mark.slow
def test_gpu_quick(tmp_path):
    document = run_quick("gpu", tmp_path)
    assert [result["kind"] for result in document["results"]] == ["train", "inference", "eval_memory"]
    rows = [row for result in document["results"] for row in result["rows"]]
    assert rows and all("error" not in row and "skipped" not in row for row in rows), rows
    train = [row for row in rows if "method" in row]
    assert {row["method"] for row in train} == {"ours", "bare"} and all(row["images_per_s"] > 0 for row in train)
    assert {row["mode"] for row in rows if "mode" in row} == {"whole", "slide"}
    assert document["anchors"]["mmsegmentation_ade20k_fps_v100"]["segformer-b0"] == 51.3


def test_startup_quick(tmp_path):
    output = tmp_path / "startup.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "startup.py"), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "machine:" in completed.stdout and "| hfseg doctor (2 pairs)" in completed.stdout
    document = json.loads(output.read_text())
    assert document["benchmark"] == "startup" and document["baseline"]["min_s"] > 0
    commands = [result["command"] for result in document["results"]]
    assert commands[0] == "hfseg --help" and "hfseg finetune --crop_size large" in commands
    assert all(result["ours"]["min_s"] > 0 for result in document["results"])


@pytest.mark.slow
def test_efficient_finetune_quick(tmp_path):
    document = run_quick("efficient_finetune", tmp_path)
    by_method = {result["method"]: result for result in document["results"]}
    assert set(by_method) == {"full", "freeze_backbone", "lora"}
    assert by_method["full"]["trainable_share"] == 1
    assert by_method["freeze_backbone"]["trainable"] < by_method["full"]["trainable"]
    assert by_method["lora"]["total"] > by_method["full"]["total"]  # the adapters add parameters
    assert all(result["s_per_step"] > 0 for result in by_method.values())


@pytest.mark.slow
def test_binary_vs_softmax_quick(tmp_path):
    document = run_quick("binary_vs_softmax", tmp_path)
    assert [(result["head"], result["task"], result["loss"]) for result in document["results"]] == [
        ("binary", "binary", "bce"),
        ("softmax", "multiclass", "ce"),
    ]
    for result in document["results"]:
        assert 0 <= result["foreground_iou"] <= 1 and result["steps"] == 2
        assert 0 <= result["membrane_iou"] <= 1 and result["trivial"] == (result["membrane_iou"] < 0.05)
    assert document["summary"]["gaps"] and document["summary"]["std_over_seeds"] == {"binary": None, "softmax": None}


@pytest.mark.slow
def test_export_quick(tmp_path):
    pytest.importorskip("onnxruntime")
    document = run_quick("export", tmp_path)
    (result,) = document["results"]
    assert [variant["variant"] for variant in result["variants"]] == ["fp32", "dynamic-int8", "static-int8"]
    fp32 = result["variants"][0]
    assert fp32["pixel_agreement"] >= 0.999 and fp32["num_images"] == 4
    assert all(variant["onnx"]["images_per_second"] > 0 for variant in result["variants"])
    assert len(document["table"]["rows"]) == 3
