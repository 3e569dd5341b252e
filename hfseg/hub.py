"""Model cards the Hub understands (`huggingface_hub.ModelCard` with a `model-index`) and pushing runs."""

from __future__ import annotations

import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A semantic-segmentation model fine-tuned with [hfseg](https://github.com/hfseg/hfseg) ({{ recipe_line }}).
It assigns every pixel one of {{ num_labels }} classes{{ dataset_line }}.

## Results

Evaluated on {{ eval_dataset }} (`{{ eval_split }}` split, `{{ eval_mode }}` inference, labels at their
original resolution):

| metric | value |
|---|---|
{{ metrics_table }}

### Per-class IoU

| id | class | IoU | accuracy |
|---|---|---|---|
{{ per_class_table }}
{{ reference_section }}
{{ predictions_section }}
## How to use

```python
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{{ model_ref }}")
for segment in segmenter("image.jpg"):
    print(segment["label"], segment["mask"].size)
```

## Training

{{ hyperparameters_table }}

The full resolved configuration is in `hfseg_config.yaml`; rerun it with
`accelerate launch hfseg/finetune.py --recipe hfseg_config.yaml`.

## Limitations

Scores hold for data like the evaluation set above; expect lower IoU on other cameras, domains and
resolutions, and on classes with few training pixels (see the per-class table). Check predictions on
your own images before relying on them.
"""

HYPERPARAMETERS = (
    "learning_rate", "per_device_train_batch_size", "num_train_epochs", "max_steps", "lr_scheduler_type",
    "warmup_ratio", "weight_decay", "seed", "crop_size", "optim",
)  # fmt: skip


def _format(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def build_model_card(
    metrics: dict,
    id2label: dict[int, str],
    model_name: str,
    config: dict | None = None,
    base_model: str | None = None,
    dataset_name: str | None = None,
    eval_split: str = "validation",
    eval_mode: str = "whole",
    reference: dict | None = None,
    predictions_image: str | None = None,
    model_ref: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """A `ModelCard` whose metadata holds the eval results as a `model-index`.

    Args:
        metrics: evaluate-style keys (`mean_iou`, `per_category_iou`, ...), with or without an `eval_` prefix.
        reference: {"mean_iou": float, "source": str} the recipe's published number, if any.
    """
    metrics = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    config = config or {}
    dataset_label = dataset_name or "the evaluation data"
    eval_results = [
        EvalResult(
            task_type="image-segmentation",
            task_name="Semantic Segmentation",
            dataset_type=dataset_name or "custom",
            dataset_name=dataset_label,
            dataset_split=eval_split,
            metric_type=key,
            metric_name=key,
            metric_value=round(float(metrics[key]), 6),
            metric_config=eval_mode,
        )
        for key in ("mean_iou", "mean_accuracy", "overall_accuracy")
        if key in metrics and not math.isnan(float(metrics[key]))
    ]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[dataset_name]
        if dataset_name and "/" in dataset_name or dataset_name in ("scene_parse_150",)
        else None,
        license=license,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["hfseg", "semantic-segmentation", "vision"],
        metrics=["mean_iou"],
        eval_results=eval_results or None,
    )
    ious = metrics.get("per_category_iou") or []
    accuracies = metrics.get("per_category_accuracy") or []
    per_class = "\n".join(
        f"| {i} | {id2label.get(i, str(i))} | {_format(float(iou))} | "
        f"{_format(float(accuracies[i])) if i < len(accuracies) else 'n/a'} |"
        for i, iou in enumerate(ious)
    )
    metrics_table = "\n".join(
        f"| {key} | {_format(float(metrics[key]))} |"
        for key in ("mean_iou", "mean_accuracy", "overall_accuracy", "mean_dice")
        if key in metrics
    )
    hyperparameters = "\n".join(
        f"- {key}: {config[key]}" for key in HYPERPARAMETERS if config.get(key) not in (None, -1)
    )
    reference_section = ""
    if reference and reference.get("mean_iou") is not None and "mean_iou" in metrics:
        delta = float(metrics["mean_iou"]) - float(reference["mean_iou"])
        reference_section = (
            f"\n### Compared with the published reference\n\nThe recipe aims at mIoU {reference['mean_iou']:.4f} "
            f"({reference.get('source', 'published')}); this model reaches {float(metrics['mean_iou']):.4f} "
            f"({delta:+.4f}).\n"
        )
    predictions_section = (
        f"\n## Predictions\n\nValidation images | ground truth | prediction:\n\n![predictions]({predictions_image})\n"
        if predictions_image
        else ""
    )
    recipe = config.get("recipe")
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        model_name=model_name,
        num_labels=len(id2label),
        recipe_line=f"recipe `{recipe}`" if recipe else "a custom configuration",
        dataset_line=f", trained on {dataset_name}" if dataset_name else "",
        eval_dataset=dataset_label,
        eval_split=eval_split,
        eval_mode=eval_mode,
        metrics_table=metrics_table,
        per_class_table=per_class,
        reference_section=reference_section,
        predictions_section=predictions_section,
        model_ref=model_ref or model_name,
        hyperparameters_table=hyperparameters or "- (defaults)",
    )


def write_model_card(output_dir: str | Path, **kwargs) -> Path:
    """Build the card (see `build_model_card`) and save it as `output_dir/README.md`."""
    path = Path(output_dir) / "README.md"
    build_model_card(**kwargs).save(path)
    return path
