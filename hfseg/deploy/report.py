"""The export's own check: the same images, pre- and post-processing through PyTorch and through ONNX Runtime;
pixel agreement, mIoU of each and their difference, images/s of each on this machine, file sizes."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from hfseg.evaluation.inference import InferenceOptions, iter_logits_at_sizes
from hfseg.evaluation.metrics import StreamingSegmentationMetric

REPORT_NAME = "export_report.json"


def _timed_masks(model, batch: dict, options: InferenceOptions) -> tuple[list[torch.Tensor], float]:
    """(H_i, W_i) class maps of one collated batch at the labels' sizes, and the seconds inference took."""
    sizes = batch["label_sizes"].tolist()
    pixel_sizes = batch.get("pixel_sizes")
    start = time.perf_counter()
    masks = [
        logits.argmax(0)
        for logits in iter_logits_at_sizes(
            model, batch["pixel_values"], sizes, options, None if pixel_sizes is None else pixel_sizes.tolist()
        )
    ]
    return masks, time.perf_counter() - start


@torch.no_grad()
def compare_backends(
    torch_model, onnx_model, batches: Iterable[dict], num_labels: int, ignore_index: int, options=None
) -> dict:
    """Run every collated batch through both models alike and score both against the labels (after one untimed
    warm-up batch each).

    Returns:
        {"num_images", "pixel_agreement" (share of all pixels where the class maps are equal), "torch" and "onnx":
        {"mean_iou", "overall_accuracy", "images_per_second", "seconds"}, "mean_iou_drop_points" (torch - onnx,
        in mIoU points: 100 x the difference of the 0-1 scores)}.
    """
    options = options or InferenceOptions()
    torch_model.eval()
    metrics = {name: StreamingSegmentationMetric(max(num_labels, 2), ignore_index) for name in ("torch", "onnx")}
    seconds = {"torch": 0.0, "onnx": 0.0}
    agreeing = total = images = 0
    batches = list(batches)
    for model in (torch_model, onnx_model):  # untimed: first-call set-up (allocations, kernel choice) is no speed
        _timed_masks(model, batches[0], options)
    for batch in batches:
        masks = {}
        for name, model in (("torch", torch_model), ("onnx", onnx_model)):
            masks[name], elapsed = _timed_masks(model, batch, options)
            seconds[name] += elapsed
        for index, (height, width) in enumerate(batch["label_sizes"].tolist()):
            label = batch["labels"][index, :height, :width]
            for name in metrics:
                metrics[name].update(masks[name][index], label)
            agreeing += int((masks["torch"][index] == masks["onnx"][index]).sum())
            total += height * width
        images += len(batch["label_sizes"])
    report = {"num_images": images, "pixel_agreement": agreeing / max(total, 1)}
    for name, metric in metrics.items():
        result = metric.compute()
        report[name] = {
            "mean_iou": float(result["mean_iou"]),
            "overall_accuracy": float(result["overall_accuracy"]),
            "images_per_second": images / seconds[name] if seconds[name] else None,
            "seconds": seconds[name],
        }
    report["mean_iou_drop_points"] = 100 * (report["torch"]["mean_iou"] - report["onnx"]["mean_iou"])
    if report["torch"]["images_per_second"] and report["onnx"]["images_per_second"]:
        report["onnx_speedup"] = report["onnx"]["images_per_second"] / report["torch"]["images_per_second"]
    return report


def machine() -> dict:
    """Where the images/s were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def file_size_mb(path: str | Path) -> float:
    return round(Path(path).stat().st_size / 2**20, 3)
