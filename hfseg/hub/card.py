"""Model cards the Hub understands: `huggingface_hub.ModelCard` metadata with a `model-index` of the eval
results, and a body with per-class IoU, the recipe, a prediction picture and how to run the model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from hfseg.config import RESOLVED_CONFIG_NAME
from hfseg.errors import HfsegError
from hfseg.hub.network import is_local
from hfseg.models.build import is_mask_classification
from hfseg.models.lora import read_parameter_counts

CARD_NAME = "README.md"
PREDICTIONS_NAME = "predictions.png"
EVAL_RESULTS_NAME = "eval_results.json"
CARD_METRICS = {"mean_iou": "Mean IoU", "mean_accuracy": "Mean Accuracy", "overall_accuracy": "Overall Accuracy"}
LISTED_CLASSES = 30  # the intro names at most this many classes; the per-class table has all

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A semantic-segmentation model fine-tuned with [hfseg](https://github.com/hfseg/hfseg) ({{ recipe_line }}).
It assigns every pixel one of {{ num_labels }} classes{{ dataset_line }}: {{ class_list }}.

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
for segment in segmenter("image.jpg"{{ pipeline_arguments }}):
    print(segment["label"], segment["mask"].size)
```

## Training

{{ hyperparameters_table }}

The full resolved configuration is in `hfseg_config.yaml`; rerun it wherever hfseg is installed
(`pip install hfseg`) with

```bash
hfseg finetune --recipe hfseg_config.yaml                         # one process
accelerate launch -m hfseg.finetune --recipe hfseg_config.yaml    # under accelerate (several GPUs or machines)
accelerate launch hfseg/finetune.py --recipe hfseg_config.yaml    # the same from a clone of the hfseg repository
```

## Limitations

Scores hold for data like the evaluation set above; expect lower IoU on other cameras, domains and
resolutions, and on classes with few training pixels (see the per-class table). Check predictions on
your own images before relying on them.{{ weakest_line }}
"""

HYPERPARAMETERS = (
    "model_name_or_path", "model_type", "image_size", "crop_size", "scale_range", "learning_rate",
    "per_device_train_batch_size", "num_train_epochs", "max_steps", "lr_scheduler_type", "warmup_steps",
    "warmup_ratio", "weight_decay", "optim", "seed",
)  # fmt: skip


def _format(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def hub_dataset_id(name: str | None) -> str | None:
    """`name` when it can be a Hub dataset id (not a local folder, not hfseg's embedded `synthetic` set)."""
    if not name or name == "synthetic" or is_local(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def recipe_reference(config: dict) -> dict | None:
    """{"mean_iou", "source"} from a resolved config's `reference_mean_iou`/`reference_source`, if declared."""
    if config.get("reference_mean_iou") is None:
        return None
    return {"mean_iou": float(config["reference_mean_iou"]), "source": config.get("reference_source") or "published"}


def card_eval_results(
    metrics: dict, dataset_type: str, dataset_name: str, eval_split: str, eval_mode: str
) -> list[EvalResult]:
    """`EvalResult`s (the `model-index` entries) for the card metrics present and not NaN in `metrics`."""
    return [
        EvalResult(
            task_type="image-segmentation",
            task_name="Semantic Segmentation",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_split=eval_split,
            metric_type=key,
            metric_name=name,
            metric_value=float(metrics[key]),
            metric_config=eval_mode,
        )
        for key, name in CARD_METRICS.items()
        if key in metrics and not math.isnan(float(metrics[key]))
    ]


def build_model_card(
    metrics: dict,
    id2label: dict[int, str],
    model_name: str,
    config: dict | None = None,
    base_model: str | None = None,
    dataset_name: str | None = None,
    eval_split: str | None = None,
    eval_mode: str | None = None,
    reference: dict | None = None,
    predictions_image: str | None = None,
    model_ref: str | None = None,
    license: str | None = None,
    parameter_counts: dict | None = None,
    pipeline_subtask: str | None = None,
) -> ModelCard:
    """A `ModelCard` whose metadata holds the eval results as a `model-index`.

    Arguments left as None are read from `config` (the resolved `hfseg_config.yaml`) where it has them.

    Args:
        metrics: evaluate-style keys (`mean_iou`, `per_category_iou`, ...), with or without an `eval_` prefix.
        id2label: {class id: name} of the model's classes.
        model_name: the card title and the `model-index` name.
        config: the resolved run configuration (hyperparameters, recipe, reference, license).
        base_model: Hub id the model was fine-tuned from (default: `model_name_or_path` unless built from a config).
        dataset_name: what the model was trained/evaluated on (default: `dataset_name` or `layout`).
        reference: {"mean_iou": float, "source": str}, the recipe's published number
            (default: `reference_mean_iou`/`reference_source`).
        predictions_image: relative path of the prediction-overlay picture shown in the card.
        model_ref: what `pipeline(model=...)` loads in the usage snippet (a Hub id or a local path).
        license: license id of the card metadata (default: `card_license`, else apache-2.0).
        parameter_counts: {method, trainable, total, share} of the run (its `trainable_parameters.json`).
        pipeline_subtask: `subtask` the usage snippet passes to the pipeline ("semantic" for mask-classification
            models, whose pipeline otherwise returns panoptic segments).

    Raises:
        HfsegError: `mean_iou` is NaN (nothing labelled was scored), which is no result to publish.
    """
    metrics = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    if "mean_iou" in metrics and math.isnan(float(metrics["mean_iou"])):
        raise HfsegError(
            "the metrics have mean_iou NaN (the evaluation scored no labelled pixel), which a model card cannot "
            "report as a result; evaluate on labelled data (`hfseg evaluate`) before writing or pushing the card"
        )
    config = config or {}
    if base_model is None and not config.get("model_type"):
        base_model = config.get("model_name_or_path")
    dataset_name = dataset_name or config.get("dataset_name") or config.get("layout")
    dataset_id = hub_dataset_id(config.get("dataset_name", dataset_name))
    eval_split = eval_split or config.get("validation_split") or "validation"
    eval_mode = eval_mode or config.get("eval_mode") or "whole"
    reference = reference or recipe_reference(config)
    license = license or config.get("card_license") or "apache-2.0"
    dataset_label = dataset_name or "the evaluation data"

    dataset_type = dataset_id or dataset_name or "custom"
    eval_results = card_eval_results(metrics, dataset_type, dataset_label, eval_split, eval_mode)
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model if base_model and not is_local(base_model) else None,
        datasets=[dataset_id] if dataset_id else None,
        license=license,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["hfseg", "semantic-segmentation", "vision", "image-segmentation"],
        metrics=list(CARD_METRICS) if eval_results else None,
        eval_results=eval_results or None,
    )
    names = [id2label[i] for i in sorted(id2label)]
    class_list = ", ".join(f"`{name}`" for name in names[:LISTED_CLASSES])
    if len(names) > LISTED_CLASSES:
        class_list += f" and {len(names) - LISTED_CLASSES} more (see the per-class table)"
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
    shown = [key for key in HYPERPARAMETERS if config.get(key) not in (None, -1)]
    if (config.get("max_steps") or -1) > 0 and "num_train_epochs" in shown:  # max_steps wins over epochs
        shown.remove("num_train_epochs")
    hyperparameters = "\n".join(f"- {key}: {config[key]}" for key in shown)
    if parameter_counts:
        hyperparameters += (
            f"\n- trained parameters ({parameter_counts['method']}): {parameter_counts['trainable']:,} of "
            f"{parameter_counts['total']:,} ({100 * parameter_counts['share']:.2f}%)"
        ).lstrip("\n")
    scored = sorted((float(iou), i) for i, iou in enumerate(ious) if not math.isnan(float(iou)))
    weakest = ", ".join(f"`{id2label.get(i, str(i))}` ({iou:.4f})" for iou, i in scored[:3])
    weakest_line = f"\n\nWeakest classes on the evaluation set (IoU): {weakest}." if len(scored) > 1 else ""
    reference_section = ""
    if reference and reference.get("mean_iou") is not None and "mean_iou" in metrics:
        achieved = float(metrics["mean_iou"])
        delta = achieved - float(reference["mean_iou"])
        reference_section = (
            f"\n### Compared with the recipe's reference\n\n"
            f"| | mIoU |\n|---|---|\n| reference: {reference.get('source') or 'published'} | "
            f"{float(reference['mean_iou']):.4f} |\n| this model | {_format(achieved)} |\n"
            f"| difference | {delta:+.4f} |\n"
        )
    predictions_section = (
        f"\n## Predictions\n\nValidation image | ground truth | prediction:\n\n![predictions]({predictions_image})\n"
        if predictions_image
        else ""
    )
    recipe = config.get("recipe")
    return ModelCard.from_template(
        card_data,
        template_str=CARD_TEMPLATE,
        model_name=model_name,
        num_labels=len(id2label),
        class_list=class_list,
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
        pipeline_arguments=f", subtask={pipeline_subtask!r}" if pipeline_subtask else "",
        hyperparameters_table=hyperparameters or "- (defaults)",
        weakest_line=weakest_line,
    )


def write_model_card(output_dir: str | Path, **kwargs) -> Path:
    """Build the card (see `build_model_card`) and save it as `output_dir/README.md`."""
    path = Path(output_dir) / CARD_NAME
    kwargs.setdefault("pipeline_subtask", saved_pipeline_subtask(output_dir))
    build_model_card(**kwargs).save(path)
    return path


def saved_pipeline_subtask(output_dir: str | Path) -> str | None:
    """ "semantic" when the model saved in `output_dir` is a mask-classification model (Mask2Former, EoMT...)."""
    config_path = Path(output_dir) / "config.json"
    if not config_path.is_file():
        return None
    model_type = json.loads(config_path.read_text()).get("model_type")
    return "semantic" if is_mask_classification(SimpleNamespace(model_type=model_type)) else None


def card_from_run(output_dir: str | Path, model_ref: str | None = None, model_name: str | None = None) -> ModelCard:
    """The card of a finished run, rebuilt from its files (eval_results.json, config.json, hfseg_config.yaml).

    Args:
        model_ref: what the usage snippet loads, e.g. the Hub repo id the run is pushed to.
        model_name: card title (default: the last part of `model_ref`, else the folder name).
    """
    output_dir = Path(output_dir)
    needed = [output_dir / name for name in (EVAL_RESULTS_NAME, "config.json", RESOLVED_CONFIG_NAME)]
    missing = [path.name for path in needed if not path.is_file()]
    if missing:
        raise HfsegError(
            f"{output_dir}: {', '.join(missing)} missing; is it the output_dir of a finished hfseg finetune run?"
        )
    metrics = json.loads(needed[0].read_text())
    id2label = {int(key): name for key, name in json.loads(needed[1].read_text())["id2label"].items()}
    config = yaml.safe_load(needed[2].read_text()) or {}
    return build_model_card(
        metrics=metrics,
        id2label=id2label,
        model_name=model_name or (model_ref.rstrip("/").split("/")[-1] if model_ref else output_dir.name),
        config=config,
        predictions_image=PREDICTIONS_NAME if (output_dir / PREDICTIONS_NAME).is_file() else None,
        model_ref=model_ref or str(output_dir),
        parameter_counts=read_parameter_counts(output_dir),
        pipeline_subtask=saved_pipeline_subtask(output_dir),
    )


ADAPTER_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A LoRA adapter (and the segmentation head trained with it) for
[{{ base_model }}](https://huggingface.co/{{ base_model }}), fine-tuned with [hfseg](https://github.com/hfseg/hfseg)
for {{ num_labels }} classes{{ dataset_line }}.{{ score_line }}
The base weights are not in this repository: [peft](https://github.com/huggingface/peft) loads the base model
and puts the adapter on it.

## How to use

```python
from peft import PeftModel
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

id2label = {{ id2label }}
base = AutoModelForSemanticSegmentation.from_pretrained(
    "{{ base_model }}",{{ revision_argument }}
    id2label=id2label,
    label2id={name: index for index, name in id2label.items()},
    ignore_mismatched_sizes=True,  # the base model's head is replaced by the adapter's
)
model = PeftModel.from_pretrained(base, "{{ adapter_ref }}").merge_and_unload()  # a plain transformers model
processor = AutoImageProcessor.from_pretrained("{{ base_model }}"{{ revision_suffix }})
```

## Training

{{ hyperparameters_table }}
"""


def adapter_card_from_run(output_dir: str | Path, adapter_ref: str) -> ModelCard:
    """The card of a run's LoRA adapter alone (`output_dir/adapter`): the base model it needs and the peft code
    that loads both; built from the run's files like `card_from_run`.

    Raises:
        HfsegError: the run was not fine-tuned from a Hub checkpoint (random init, or a local folder), so nobody
            else could load the base weights the adapter goes on; or it is a binary run, whose published head is
            the two-class one of the merged model.
    """
    output_dir = Path(output_dir)
    needed = [output_dir / name for name in ("config.json", RESOLVED_CONFIG_NAME)]
    missing = [path.name for path in needed if not path.is_file()]
    if missing:
        raise HfsegError(
            f"{output_dir}: {', '.join(missing)} missing; is it the output_dir of a finished hfseg finetune run?"
        )
    config = yaml.safe_load(needed[1].read_text()) or {}
    base_model = config.get("model_name_or_path")
    fix = "push the merged model instead (hfseg push without --adapter_only)"
    if config.get("model_type") or not base_model:
        raise HfsegError(
            f"{output_dir / RESOLVED_CONFIG_NAME}: model_type {config.get('model_type')!r} (a random-init model), "
            f"so the adapter's base weights exist nowhere but in this run; {fix}"
        )
    if hub_dataset_id(base_model) != base_model:  # the same test for a model id: a Hub name, not a local path
        raise HfsegError(
            f"{output_dir / RESOLVED_CONFIG_NAME}: model_name_or_path {base_model} is a local folder, not a Hub "
            f"id, so others cannot load the adapter's base model; push that base model to the Hub first, or {fix}"
        )
    if config.get("task") == "binary":
        raise HfsegError(
            f"{output_dir / RESOLVED_CONFIG_NAME}: task binary: the adapter holds the one-logit training head, "
            f"not the two-class head the merged model is served with; {fix}"
        )
    id2label = {int(key): name for key, name in json.loads(needed[0].read_text())["id2label"].items()}
    eval_path = output_dir / EVAL_RESULTS_NAME
    metrics = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    mean_iou = metrics.get("eval_mean_iou", metrics.get("mean_iou"))
    dataset_name = config.get("dataset_name") or config.get("layout")
    dataset_id = hub_dataset_id(config.get("dataset_name"))
    revision = config.get("revision") or "main"
    counts = read_parameter_counts(output_dir)
    hyperparameters = [f"- {key}: {config[key]}" for key in HYPERPARAMETERS if config.get(key) not in (None, -1)]
    hyperparameters += [f"- {key}: {config[key]}" for key in ("lora_r", "lora_alpha", "lora_dropout") if key in config]
    if counts:
        hyperparameters.append(
            f"- trained parameters ({counts['method']}): {counts['trainable']:,} of {counts['total']:,} "
            f"({100 * counts['share']:.2f}%)"
        )
    card_data = ModelCardData(
        model_name=adapter_ref.rstrip("/").split("/")[-1],
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        license=config.get("card_license") or "apache-2.0",
        library_name="peft",
        pipeline_tag="image-segmentation",
        tags=["hfseg", "semantic-segmentation", "lora", "image-segmentation"],
    )
    return ModelCard.from_template(
        card_data,
        template_str=ADAPTER_CARD_TEMPLATE,
        model_name=card_data.model_name,
        base_model=base_model,
        num_labels=len(id2label),
        dataset_line=f", trained on {dataset_name}" if dataset_name else "",
        score_line=f" Mean IoU on its evaluation set: {_format(float(mean_iou))}." if mean_iou is not None else "",
        id2label=repr(dict(sorted(id2label.items()))),
        revision_argument=f'\n    revision="{revision}",' if revision != "main" else "",
        revision_suffix=f', revision="{revision}"' if revision != "main" else "",
        adapter_ref=adapter_ref,
        hyperparameters_table="\n".join(hyperparameters) or "- (defaults)",
    )


def export_card_section(report: dict) -> str:
    """The card's "ONNX export" section from an `export_report.json` (`hfseg export`): agreement, mIoU, speed, size."""
    torch_side, onnx_side, sizes = report["torch"], report["onnx"], report["file_sizes_mb"]

    def number(value, digits: int = 2) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    variant = report["dtype"] + (f", {report['quantize']}" if report.get("quantize") else "")
    return (
        f"\n## ONNX export\n\n`{report['file']}` ({variant}, {report['exporter']}, ONNX Runtime CPU), checked against "
        f"PyTorch on {report['num_images']} images of {report['data']} (`whole` inference, same pre- and "
        f"post-processing):\n\n| | PyTorch | ONNX Runtime |\n|---|---|---|\n"
        f"| mIoU | {_format(torch_side['mean_iou'])} | {_format(onnx_side['mean_iou'])} |\n"
        f"| images/s ({report['machine']['cpu_count']} CPUs) | {number(torch_side['images_per_second'])} | "
        f"{number(onnx_side['images_per_second'])} |\n"
        f"| file size (MB) | {number(sizes['pytorch'])} | {number(sizes['onnx'])} |\n\n"
        f"Pixel agreement {100 * report['pixel_agreement']:.3f}%, mIoU difference "
        f"{report['mean_iou_drop_points']:+.2f} points (PyTorch - ONNX).\n"
    )
