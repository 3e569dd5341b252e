"""Evaluation memory and time: hfseg's streaming evaluation (SegTrainer) vs the transformers example's approach.

Baseline, as in transformers' examples/pytorch/semantic-segmentation/run_semantic_segmentation.py: images and
labels resized to the model's input size, a plain `Trainer` that keeps every eval logit, then `compute_metrics`
upsamples all logits at once, argmaxes them and computes `evaluate`'s `mean_iou` (its formula, in numpy:
`evaluate.load` needs the network; the real one also copies every prediction into Arrow, so this baseline is
a lower bound of its cost). Ours: `SegTrainer.evaluate` with `TrainerSegmentationMetrics`, labels at their own
size. Each (method, N) runs in a fresh process; its peak RSS is the figure (`getrusage`, as it ends).

Where the machine cannot hold the baseline, it is still run, not skipped: each child's address space is capped
below the free RAM (`RLIMIT_AS`), so it fails cleanly instead of meeting the OOM killer. A run that fails on an
allocation is recorded with the size it asked for (torch's or numpy's own error) and its peak RSS so far;
the larger of the two is a measured lower bound of the memory that run needs, and the ratio is reported as ">=".

    python benchmarks/eval_memory.py            # B0 (SegformerConfig()), 150 labels, N = 4, 8, 16, eval batch 2
    python benchmarks/eval_memory.py --full     # N = 50, 200, 500 (~40 minutes on 2 CPU cores)
    python benchmarks/eval_memory.py --quick    # CI-sized
    python benchmarks/eval_memory.py --family mask2former   # Mask2Former, 150 labels, 100 queries, input 256

Mask2Former's baseline keeps every eval output (class and mask logits of all queries, as a plain prediction loop
over the model would), then runs transformers' `post_process_semantic_segmentation` at the labels' size and the
same `mean_iou`; ours is the same `SegTrainer.evaluate` as for SegFormer.
"""

from __future__ import annotations

from common import (
    TINY_SEGFORMER,
    available_memory_bytes,
    base_parser,
    child_main,
    current_rss_mb,
    default_output,
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


def failed_allocation_bytes(error: BaseException) -> int | None:
    """The size of the allocation that `error` reports failing (torch's CPU allocator or numpy), else None."""
    import re

    total = getattr(error, "_total_size", None)  # numpy's _ArrayMemoryError
    if isinstance(total, int):
        return total
    match = re.search(r"tried to allocate (\d+) bytes", str(error))  # torch's DefaultCPUAllocator
    return int(match.group(1)) if match else None


def peak_lower_bound_mb(result: dict) -> float | None:
    """Peak RSS of a completed run; for one that failed on an allocation, max(peak so far, size it asked for)."""
    if result.get("completed", True):
        return result.get("peak_rss_mb")
    asked = result.get("failed_allocation_bytes")
    candidates = [v for v in (result.get("peak_rss_mb"), asked and asked / 2**20) if isinstance(v, (int, float))]
    return round(max(candidates), 1) if candidates else None


def cap_address_space(budget_bytes: int) -> int:
    """Limit this process's address space to what it maps now plus `budget_bytes`; returns the limit."""
    import resource
    from pathlib import Path

    mapped = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            mapped = int(line.split()[1]) * 1024
    limit = mapped + int(budget_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return limit


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

    from hfseg.config import SegTrainingArguments
    from hfseg.data.collate import collate_segmentation
    from hfseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform
    from hfseg.evaluation.metrics import TrainerSegmentationMetrics
    from hfseg.training.trainer import SegTrainer

    torch.manual_seed(0)
    num_labels, input_size, ignore_index = config["num_labels"], config["input_size"], 255
    id2label = {i: f"class_{i}" for i in range(num_labels)}
    if config.get("family") == "mask2former":
        model = build_mask2former(config["model"], num_labels, id2label)
    else:
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
        if config["method"] != "ours" and config.get("family") == "mask2former":
            trainer = KeepAllOutputs(model, Samples(), config["batch_size"], num_labels, ignore_index)
        setup_rss = current_rss_mb()
        limit = cap_address_space(config["memory_budget_bytes"]) if config.get("memory_budget_bytes") else None
        started = time.perf_counter()
        try:
            metrics = trainer.evaluate()
        except (MemoryError, RuntimeError) as error:
            asked = failed_allocation_bytes(error)
            if asked is None:
                raise
            return {
                "method": config["method"],
                "n": config["n"],
                "completed": False,
                "failed_allocation_bytes": asked,
                "error": str(error).splitlines()[0][:300],
                "eval_s_until_failure": round(time.perf_counter() - started, 2),
                "setup_rss_mb": setup_rss,
                "address_space_limit_bytes": limit,
            }
        eval_seconds = time.perf_counter() - started
    return {
        "method": config["method"],
        "n": config["n"],
        "completed": True,
        "eval_s": round(eval_seconds, 2),
        "s_per_image": round(eval_seconds / config["n"], 3),
        "setup_rss_mb": setup_rss,
        "eval_mean_iou": metrics.get("eval_mean_iou"),
        "address_space_limit_bytes": limit,
    }


def build_mask2former(size: str, num_labels: int, id2label: dict):
    """A random-init Mask2Former: `small` is `Mask2FormerConfig()` (pixel decoder, 10 decoder layers, 100 queries)
    on a one-block-per-stage Swin (the full Swin-S takes over a minute per 512-pixel image on 2 CPU cores);
    `tiny` is tiny everywhere (5 queries)."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    labels = {"num_labels": num_labels, "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    if size == "small":
        swin = SwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=8, image_size=256,
                          out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
        return Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=swin, **labels)).eval()
    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
                      out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    config = Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=32, num_queries=5, **labels,
    )  # fmt: skip
    return Mask2FormerForUniversalSegmentation(config).eval()


class KeepAllOutputs:
    """Mask2Former's baseline: every image's class and mask logits kept, then post-processed and scored at once."""

    def __init__(self, model, dataset, batch_size: int, num_labels: int, ignore_index: int):
        self.model, self.dataset, self.batch_size = model, dataset, batch_size
        self.num_labels, self.ignore_index = num_labels, ignore_index

    def evaluate(self) -> dict:
        import torch
        from transformers import Mask2FormerImageProcessor
        from transformers.modeling_outputs import ModelOutput

        class_logits, mask_logits, labels = [], [], []
        with torch.no_grad():
            for start in range(0, len(self.dataset), self.batch_size):
                batch = [self.dataset[i] for i in range(start, min(start + self.batch_size, len(self.dataset)))]
                outputs = self.model(pixel_values=torch.stack([example["pixel_values"] for example in batch]))
                class_logits.append(outputs.class_queries_logits)
                mask_logits.append(outputs.masks_queries_logits)
                labels += [example["labels"].numpy() for example in batch]
        outputs = ModelOutput(
            class_queries_logits=torch.cat(class_logits), masks_queries_logits=torch.cat(mask_logits)
        )
        maps = Mask2FormerImageProcessor().post_process_semantic_segmentation(
            outputs, target_sizes=[label.shape for label in labels]
        )
        metrics = evaluate_style_mean_iou([m.numpy() for m in maps], labels, self.num_labels, self.ignore_index)
        return {"eval_mean_iou": metrics["mean_iou"]}


# --- parent ---------------------------------------------------------------------------------------------------


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="The large sizes: N = 50, 200, 500 (slow).")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="Numbers of images N to evaluate.")
    parser.add_argument("--batch_size", type=int, default=2, help="per_device_eval_batch_size (both methods).")
    parser.add_argument("--family", choices=("segformer", "mask2former"), default="segformer", help="Model family.")
    parser.add_argument(
        "--memory_fraction",
        type=float,
        default=0.75,
        help="Each child may grow by this fraction of the RAM free at the start (RLIMIT_AS); 0 disables the cap.",
    )
    args = parser.parse_args()
    if args.child:
        child_main(run_configuration, args.child)
        return

    if args.quick:
        base = {"model": "tiny", "num_labels": 10, "input_size": 64, "base_size": [64, 86]}
        sizes = args.sizes or [4]
    else:
        base = {"model": "b0", "num_labels": 150, "input_size": 512, "base_size": [512, 683]}
        if args.family == "mask2former":
            base = {"model": "small", "num_labels": 150, "input_size": 256, "base_size": [256, 341]}
        sizes = args.sizes or ([50, 200, 500] if args.full else [4, 8, 16])
    base["batch_size"] = args.batch_size
    base["family"] = args.family
    info = machine_info()
    print(machine_line(info), flush=True)

    base["memory_budget_bytes"] = int(args.memory_fraction * available_memory_bytes()) if not args.quick else 0
    configs = [{**base, "method": method, "n": n} for n in sizes for method in ("ours", "baseline")]
    results = run_configurations(f"{NAME}.py", configs, isolated=not args.quick)
    for result, config in zip(results, configs, strict=True):
        result.setdefault("method", config["method"])
        result.setdefault("n", config["n"])
        result["peak_lower_bound_mb"] = peak_lower_bound_mb(result)

    rows = [table_row(n, results) for n in sizes]
    growth = {
        method: memory_growth([r for r in results if r["method"] == method and r.get("completed")])
        for method in ("ours", "baseline")
    }
    headers = ["N", "ours peak MB", "baseline peak MB", "mem ours/base", "ours s", "baseline s", "time ours/base"]
    family = "SegFormer" if args.family == "segformer" else "Mask2Former"
    setting = (
        f"{family} {base['model']}, {base['num_labels']} labels, images ~{base['base_size']}, "
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
    if args.output is None and args.family != "segformer":
        args.output = default_output(f"{NAME}_{args.family}", args.quick)
    path = write_results(NAME, args, {**payload, "table": {"headers": headers, "rows": rows}})
    print(f"wrote {path}")


def table_row(n: int, results: list[dict]) -> list:
    """One table row: figures of both methods at N; a failed baseline shows ">= bound" and its time so far."""
    ours = next(r for r in results if r["n"] == n and r["method"] == "ours")
    baseline = next(r for r in results if r["n"] == n and r["method"] == "baseline")
    if baseline.get("completed"):
        base_memory, base_time = baseline.get("peak_rss_mb"), baseline.get("eval_s")
        memory_ratio, time_ratio = ratio(ours.get("peak_rss_mb"), base_memory), ratio(ours.get("eval_s"), base_time)
    elif baseline.get("failed_allocation_bytes") and ours.get("peak_rss_mb"):
        bound = baseline["peak_lower_bound_mb"]
        asked = baseline["failed_allocation_bytes"] / 2**30
        base_memory = f">= {bound:.0f} (failed: asked for {asked:.1f} GiB at once)"
        base_time = f"> {baseline['eval_s_until_failure']} (failed)"
        memory_ratio = f"<= {ours['peak_rss_mb'] / bound:.3g} (>= {bound / ours['peak_rss_mb']:.1f}x lower)"
        time_ratio = "-"
    else:
        base_memory, base_time, memory_ratio, time_ratio = baseline.get("error", "-"), "-", "-", "-"
    return [n, ours.get("peak_rss_mb"), base_memory, memory_ratio, ours.get("eval_s"), base_time, time_ratio]


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
