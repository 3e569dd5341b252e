"""Evaluation memory and time: hfseg's streaming evaluation (SegTrainer) vs the transformers example's approach.

Baseline, as in transformers' examples/pytorch/semantic-segmentation/run_semantic_segmentation.py: images and
labels resized to the model's input size, a plain `Trainer` that keeps every eval logit, then `compute_metrics`
upsamples all logits at once, argmaxes them and computes `evaluate`'s `mean_iou` (its formula, in numpy:
`evaluate.load` needs the network; the real one also copies every prediction into Arrow, so this baseline is
a lower bound of its cost). Ours: `SegTrainer.evaluate` with `TrainerSegmentationMetrics`, labels at their own
size. Each (method, N) runs in a fresh process; its peak RSS is the figure (`getrusage`, as it ends).

    python benchmarks/eval_memory.py            # B0 (SegformerConfig()), 150 labels, N = 4, 8, 16, eval batch 2
    python benchmarks/eval_memory.py --full     # the issue's N = 50, 200, 500 (baseline skipped where RAM is short)
    python benchmarks/eval_memory.py --quick    # CI-sized
"""

from __future__ import annotations

from common import (
    TINY_SEGFORMER,
    available_memory_bytes,
    base_parser,
    child_main,
    current_rss_mb,
    format_table,
    machine_info,
    machine_line,
    ratio,
    run_configurations,
    write_results,
)

NAME = "eval_memory"


def evaluate_style_mean_iou(predictions, references, num_labels: int, ignore_index: int) -> dict:
    """`evaluate`'s `mean_iou` (metrics/mean_iou/mean_iou.py), same formula and numpy calls, no `reduce_labels`.

    Args:
        predictions, references: sequences of (H, W) integer class maps.
    """
    import numpy as np

    total_intersect = np.zeros((num_labels,), dtype=np.float64)
    total_union = np.zeros((num_labels,), dtype=np.float64)
    total_pred = np.zeros((num_labels,), dtype=np.float64)
    total_label = np.zeros((num_labels,), dtype=np.float64)
    for pred_label, label in zip(predictions, references, strict=True):
        pred_label, label = np.array(pred_label), np.array(label)
        mask = np.not_equal(label, ignore_index)
        pred_label, label = pred_label[mask], label[mask]
        intersect = pred_label[pred_label == label]
        area_intersect = np.histogram(intersect, bins=num_labels, range=(0, num_labels - 1))[0]
        area_pred = np.histogram(pred_label, bins=num_labels, range=(0, num_labels - 1))[0]
        area_label = np.histogram(label, bins=num_labels, range=(0, num_labels - 1))[0]
        total_intersect += area_intersect
        total_union += area_pred + area_label - area_intersect
        total_pred += area_pred
        total_label += area_label
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = total_intersect / total_union
        accuracy = total_intersect / total_label
    return {
        "mean_iou": float(np.nanmean(iou)),
        "mean_accuracy": float(np.nanmean(accuracy)),
        "overall_accuracy": float(total_intersect.sum() / total_label.sum()),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }


def estimated_baseline_bytes(n: int, num_labels: int, input_size: int) -> int:
    """Kept logits (twice while concatenating) + all logits upsampled at once + labels and predictions."""
    logits = num_labels * (input_size // 4) ** 2 * 4
    upsampled = num_labels * input_size**2 * 4
    maps = input_size**2 * 8 * 3
    return n * (2 * logits + upsampled + maps) + 2**30


# --- child: one (method, N) evaluation --------------------------------------------------------------------------


def run_configuration(config: dict) -> dict:
    import tempfile
    import time

    import numpy as np
    import torch
    import torch.nn.functional as F
    from common import ade_like_sample
    from PIL import Image
    from torchvision import tv_tensors
    from torchvision.transforms import v2
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, Trainer, TrainingArguments
    from transformers.data.data_collator import default_data_collator

    from hfseg.collate import collate_segmentation
    from hfseg.config import SegTrainingArguments
    from hfseg.metrics import TrainerSegmentationMetrics
    from hfseg.trainer import SegTrainer
    from hfseg.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform

    torch.manual_seed(0)
    num_labels, input_size, ignore_index = config["num_labels"], config["input_size"], 255
    id2label = {i: f"class_{i}" for i in range(num_labels)}
    overrides = TINY_SEGFORMER if config["model"] == "tiny" else {}
    model_config = SegformerConfig(num_labels=num_labels, id2label=id2label, **overrides)
    model = SegformerForSemanticSegmentation(model_config).eval()

    if config["method"] == "ours":
        transform = EvalTransform(input_size)
    else:
        # The example's val_transforms: A.Resize(height, width) on image and mask, then Normalize.
        resize = v2.Compose(
            [
                v2.Resize((input_size, input_size), antialias=True),
                v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

        def transform(image, labels):
            image = tv_tensors.Image(torch.from_numpy(np.asarray(image)).permute(2, 0, 1))
            pixel, mask = resize(image, tv_tensors.Mask(torch.from_numpy(labels).long()[None]))
            return pixel.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)[0]

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return config["n"]

        def __getitem__(self, index):
            image, labels = ade_like_sample(index, num_labels, tuple(config["base_size"]))
            pixel_values, labels = transform(Image.fromarray(image), labels.astype(np.int64))
            return {"pixel_values": pixel_values, "labels": labels}

    num_labels_model = model.config.num_labels

    @torch.no_grad()
    def example_compute_metrics(eval_pred):
        """transformers' example, verbatim but for `metric.compute` -> `evaluate_style_mean_iou`."""
        logits, labels = eval_pred
        logits_tensor = torch.from_numpy(logits)
        logits_tensor = F.interpolate(logits_tensor, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        pred_labels = logits_tensor.argmax(dim=1).detach().cpu().numpy()
        metrics = evaluate_style_mean_iou(pred_labels, labels, num_labels_model, ignore_index)
        per_category_accuracy = metrics.pop("per_category_accuracy").tolist()
        per_category_iou = metrics.pop("per_category_iou").tolist()
        metrics.update({f"accuracy_{id2label[i]}": v for i, v in enumerate(per_category_accuracy)})
        metrics.update({f"iou_{id2label[i]}": v for i, v in enumerate(per_category_iou)})
        return metrics

    with tempfile.TemporaryDirectory() as output_dir:
        common_args = {
            "output_dir": output_dir,
            "per_device_eval_batch_size": config["batch_size"],
            "report_to": "none",
            "dataloader_num_workers": 0,
            "remove_unused_columns": False,
            "use_cpu": True,
        }
        if config["method"] == "ours":
            trainer = SegTrainer(
                model=model,
                args=SegTrainingArguments(**common_args),
                eval_dataset=Samples(),
                data_collator=lambda examples: collate_segmentation(examples, ignore_index),
                compute_metrics=TrainerSegmentationMetrics(id2label, ignore_index),
                ignore_index=ignore_index,
            )
        else:
            trainer = Trainer(
                model=model,
                args=TrainingArguments(**common_args),
                eval_dataset=Samples(),
                data_collator=default_data_collator,
                compute_metrics=example_compute_metrics,
            )
        setup_rss = current_rss_mb()
        started = time.perf_counter()
        metrics = trainer.evaluate()
        eval_seconds = time.perf_counter() - started
    return {
        "method": config["method"],
        "n": config["n"],
        "eval_s": round(eval_seconds, 2),
        "s_per_image": round(eval_seconds / config["n"], 3),
        "setup_rss_mb": setup_rss,
        "eval_mean_iou": metrics.get("eval_mean_iou"),
    }


# --- parent ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="The issue's sizes: N = 50, 200, 500 (slow).")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="Numbers of images N to evaluate.")
    parser.add_argument("--batch_size", type=int, default=2, help="per_device_eval_batch_size (both methods).")
    args = parser.parse_args()
    if args.child:
        child_main(run_configuration, args.child)
        return

    if args.quick:
        base = {"model": "tiny", "num_labels": 10, "input_size": 64, "base_size": [64, 86]}
        sizes = args.sizes or [4]
    else:
        base = {"model": "b0", "num_labels": 150, "input_size": 512, "base_size": [512, 683]}
        sizes = args.sizes or ([50, 200, 500] if args.full else [4, 8, 16])
    base["batch_size"] = args.batch_size
    info = machine_info()
    print(machine_line(info), flush=True)

    configs, skipped = [], []
    for n in sizes:
        configs.append({**base, "method": "ours", "n": n})
        needed = estimated_baseline_bytes(n, base["num_labels"], base["input_size"])
        if needed > 0.8 * available_memory_bytes():
            free = available_memory_bytes() / 2**30
            skipped.append(
                {"method": "baseline", "n": n, "skipped": f"needs ~{needed / 2**30:.0f} GiB, {free:.0f} free"}
            )
        else:
            configs.append({**base, "method": "baseline", "n": n})
    results = run_configurations(f"{NAME}.py", configs, isolated=not args.quick) + skipped
    for result, config in zip(results, configs, strict=False):
        result.setdefault("method", config["method"])
        result.setdefault("n", config["n"])

    rows = []
    for n in sizes:
        ours = next(r for r in results if r["n"] == n and r["method"] == "ours")
        baseline = next(r for r in results if r["n"] == n and r["method"] == "baseline")
        rows.append(
            [
                n,
                ours.get("peak_rss_mb"),
                baseline.get("peak_rss_mb", baseline.get("skipped") or baseline.get("error")),
                ratio(ours.get("peak_rss_mb"), baseline.get("peak_rss_mb")),
                ours.get("eval_s"),
                baseline.get("eval_s"),
                ratio(ours.get("eval_s"), baseline.get("eval_s")),
            ]
        )
    growth = {method: memory_growth([r for r in results if r["method"] == method]) for method in ("ours", "baseline")}
    headers = ["N", "ours peak MB", "baseline peak MB", "mem ours/base", "ours s", "baseline s", "time ours/base"]
    setting = (
        f"SegFormer {base['model']}, {base['num_labels']} labels, images ~{base['base_size']}, "
        f"input {base['input_size']}, eval batch {args.batch_size}"
    )
    print(f"\n{NAME}: {setting}")
    print(format_table(headers, rows))
    for method, fit in growth.items():
        if fit:
            sizes = fit["fitted_sizes"]
            line = f"{fit['intercept_mb']:.0f} MB + {fit['mb_per_image']:.1f} MB x N (fit over N = {sizes})"
            print(f"{method}: peak RSS ~ {line}; at N = 500: ~{fit['at_500_mb'] / 1024:.1f} GB")
    print(machine_line(info))
    payload = {"machine": info, "settings": base, "results": results, "memory_growth": growth}
    path = write_results(NAME, args, {**payload, "table": {"headers": headers, "rows": rows}})
    print(f"wrote {path}")


def memory_growth(results: list[dict]) -> dict | None:
    """Least-squares line peak_rss_mb = intercept + slope * N over the measured sizes (None under 2 sizes)."""
    points = [(r["n"], r["peak_rss_mb"]) for r in results if isinstance(r.get("peak_rss_mb"), (int, float))]
    if len({n for n, _ in points}) < 2:
        return None
    mean_n = sum(n for n, _ in points) / len(points)
    mean_m = sum(m for _, m in points) / len(points)
    slope = sum((n - mean_n) * (m - mean_m) for n, m in points) / sum((n - mean_n) ** 2 for n, _ in points)
    intercept = mean_m - slope * mean_n
    return {
        "mb_per_image": round(slope, 2),
        "intercept_mb": round(intercept, 1),
        "fitted_sizes": sorted(n for n, _ in points),
        "at_500_mb": round(intercept + 500 * slope, 0),
    }


if __name__ == "__main__":
    main()
