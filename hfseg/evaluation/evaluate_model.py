"""`hfseg evaluate`: score a saved model on a data set at the labels' original resolution.

hfseg evaluate --model DIR --dataset_name ID|DIR [--eval_mode slide --eval_flip] --output_dir OUT [--worst K]
accelerate launch -m hfseg.evaluation.evaluate_model ...  # the same, over several processes (exactly the same numbers)

Runs `SegTrainer.evaluate` (per-sample confusion matrices, gathered without the distributed sampler's
duplicates), prints a per-class table and writes OUT/eval_results.json, OUT/confusion_matrix.png and,
with --worst K, OUT/worst_images.png.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hfseg.config import DataArguments, SegArgumentParser, SegTrainingArguments
from hfseg.data.adapters import label_spec_for_model, open_source, with_saved_ignore_index
from hfseg.data.adapters.base import VALIDATION_SPLIT_NAMES, row_files, split_train_validation
from hfseg.data.collate import collate_segmentation
from hfseg.data.labels import LabelSpec
from hfseg.data.preprocess import attach_transform, encode_pair, rows_for
from hfseg.deploy.onnx_model import BACKEND_HELP, load_for_backend
from hfseg.errors import HfsegError, strip_debug, user_errors_exit
from hfseg.evaluation.inference import InferenceOptions, eval_transform_for, predict_masks
from hfseg.evaluation.metrics import TrainerSegmentationMetrics, format_per_class_table
from hfseg.evaluation.visualize import save_confusion_matrix, save_prediction_grid
from hfseg.models.binary import THRESHOLD_ATTRIBUTE
from hfseg.models.build import processor_input_size
from hfseg.training.trainer import SegTrainer

logger = logging.getLogger("hfseg")

RESULTS_NAME = "eval_results.json"
CONFUSION_NAME = "confusion_matrix.png"
WORST_NAME = "worst_images.png"


@dataclass
class EvaluateArguments:
    model: str | None = field(
        default=None, metadata={"help": "Saved model directory (hfseg finetune's output_dir) or Hub id."}
    )
    split: str | None = field(
        default=None,
        metadata={
            "help": "Split to evaluate (default: --validation_split, else validation/val/test, else the part of "
            "train that hfseg finetune holds out)."
        },
    )
    worst: int = field(
        default=0,
        metadata={"help": "Also save worst_images.png: the K images with the lowest per-image mIoU."},
    )
    backend: str = field(default="pytorch", metadata=BACKEND_HELP)
    revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own Python code to run."})


def parse_evaluate_args(argv: list[str] | None = None):
    parser = SegArgumentParser((EvaluateArguments, DataArguments, SegTrainingArguments))
    parser.prog = "hfseg evaluate"
    parser.set_defaults(output_dir="outputs/eval", ignore_index=None)  # None: the model's (LabelSpec.from_config)
    evaluate_args, data_args, training_args = parser.parse_command(argv)
    if not evaluate_args.model:
        raise HfsegError("no model given: pass --model DIR (a saved model, e.g. hfseg finetune's output_dir)")
    if evaluate_args.worst < 0:
        raise HfsegError(f"--worst is {evaluate_args.worst}; pass a number of images >= 0")
    if getattr(data_args, "streaming", False):
        raise HfsegError("--streaming: hfseg evaluate needs a data set it can index; leave --streaming out")
    if data_args.dataset_name == "synthetic":  # validation images do not depend on the train size
        data_args = dataclasses.replace(data_args, synthetic_train_size=1)
    return evaluate_args, data_args, training_args


@user_errors_exit
def main(argv: list[str] | None = None) -> dict:
    evaluate_args, data_args, training_args = parse_evaluate_args(strip_debug(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    # Model -> labels -> data at the mode's resolution.
    model, processor = load_for_backend(
        evaluate_args.model, evaluate_args.backend, evaluate_args.revision, evaluate_args.trust_remote_code
    )
    where = config_location(evaluate_args.model)
    saved = LabelSpec.from_config(model.config, where)  # None for models saved without it: the flags decide
    data_args = with_saved_ignore_index(data_args, saved, where)
    source = open_source(data_args, seed=training_args.seed)
    spec = label_spec_for_model(source, data_args, model.config.id2label, saved, where)
    rows = evaluation_split(source, data_args, evaluate_args.split, training_args.seed)
    options = InferenceOptions.from_arguments(training_args).with_input_size(processor_input_size(processor))
    eval_transform = eval_transform_for(processor, options)
    split = evaluate_args.split or "validation"  # a pair that cannot be read is named by file, split and row
    num_channels = getattr(model.config, "num_channels", None)  # other than 3: images read by band
    dataset = attach_transform(
        rows, source.image_column, source.label_column, spec, eval_transform, split, num_channels=num_channels
    )

    # SegTrainer.evaluate: streamed confusion matrices, exact across processes.
    metric = TrainerSegmentationMetrics(
        spec.id2label,
        spec.ignore_index,
        keep_per_sample=evaluate_args.worst > 0,
        foreground=hasattr(model.config, THRESHOLD_ATTRIBUTE),  # a saved --task binary model
    )
    trainer = SegTrainer(
        model=model,
        args=training_args,
        eval_dataset=dataset,
        data_collator=functools.partial(collate_segmentation, ignore_index=spec.ignore_index),
        compute_metrics=metric,
        processing_class=processor,
        ignore_index=spec.ignore_index,
        inference_options=options,
    )
    metrics = trainer.evaluate()
    if math.isnan(metrics["eval_mean_iou"]):
        raise HfsegError(
            f"no labelled pixel in the {len(rows)} evaluated images (every mask pixel is "
            f"ignore_index={data_args.ignore_index}), so there is no score; evaluate a split with labels "
            "(`hfseg doctor` with the same data flags shows pixels per class)"
        )
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        print(f"\n{evaluate_args.model} on {len(rows)} images, inference: {options.describe()}\n")
        print(format_per_class_table(metrics, spec.id2label) + "\n")
        results = {
            **metrics,
            "model": evaluate_args.model,
            "num_images": len(rows),
            "inference": dataclasses.asdict(options),
            "id2label": {str(k): v for k, v in spec.id2label.items()},
            "confusion_matrix": metric.last_confusion.tolist(),
        }
        save_confusion_matrix(metric.last_confusion, spec.id2label, output_dir / CONFUSION_NAME)
        if evaluate_args.worst:
            results["worst_images"] = save_worst_images(
                trainer.model, rows, source, spec, eval_transform, options, metric.per_sample_iou,
                evaluate_args.worst, output_dir / WORST_NAME,
            )  # fmt: skip
        (output_dir / RESULTS_NAME).write_text(compact_json(results))
        logger.info("wrote %s, %s%s to %s", RESULTS_NAME, CONFUSION_NAME,
                    f", {WORST_NAME}" if evaluate_args.worst else "", output_dir)  # fmt: skip
    return metrics


def compact_json(data) -> str:
    """JSON with two-space indents, but lists of numbers (confusion-matrix rows, per-class values) on one line."""
    text = json.dumps(data, indent=2)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda match: "[" + re.sub(r"\s+", " ", match.group(1)) + "]", text)


def config_location(model: str) -> str:
    """Where a model's config.json is, for messages: DIR/config.json, or the Hub id's."""
    return str(Path(model) / "config.json") if Path(model).is_dir() else f"config.json of {model}"


def evaluation_split(source, data_args, split: str | None, seed: int):
    """`--split`, else `--validation_split`, else validation/val/test, else the part of train that
    `hfseg finetune` holds out (same seed, same fraction); capped by `--max_eval_samples`."""
    splits = source.dataset
    name = split or data_args.validation_split or next((n for n in VALIDATION_SPLIT_NAMES if n in splits), None)
    if name is None:
        return split_train_validation(splits, data_args, seed)["validation"]
    if name not in splits:
        raise HfsegError(f"split '{name}' not found (splits: {list(splits)}); set --split")
    dataset = splits[name]
    if data_args.max_eval_samples is not None and len(dataset) > data_args.max_eval_samples:
        dataset = dataset.select(range(data_args.max_eval_samples))
    if len(dataset) == 0:
        raise HfsegError(f"split '{name}' is empty; set --split to a split with images")
    return dataset


def save_worst_images(model, rows, source, spec, transform, options, per_sample_iou, count, path) -> list[dict]:
    """Gallery of the `count` images with the lowest mIoU (image | truth | prediction); returns their row
    indices, image and mask files (None where the rows hold no path) and scores. Images without labelled
    pixels (NaN mIoU) are left out."""
    if len(per_sample_iou) != len(rows):
        raise RuntimeError(f"{len(per_sample_iou)} per-image scores for {len(rows)} images")
    scored = sorted((iou, index) for index, iou in enumerate(per_sample_iou) if not math.isnan(iou))
    worst = [(index, iou) for iou, index in scored[:count]]
    if not worst:
        return []
    num_channels = getattr(model.config, "num_channels", None)
    columns = (source.image_column, source.label_column)
    readable = rows_for(rows, columns)
    pairs = [
        encode_pair(readable[index][columns[0]], readable[index][columns[1]], spec, f"row {index}", num_channels)
        for index, _ in worst
    ]
    files = row_files(rows, [index for index, _ in worst], (source.image_column, source.label_column))
    names = [
        Path(image).name if image else f"row {index}" for (index, _), (image, _) in zip(worst, files, strict=True)
    ]
    predictions = predict_masks(model, [image for image, _ in pairs], transform, batch_size=1, options=options)
    save_prediction_grid(
        [(image, truth, prediction.numpy()) for (image, truth), prediction in zip(pairs, predictions, strict=True)],
        spec.id2label,
        path,
        title=f"{len(worst)} lowest per-image mIoU",
        row_titles=[f"{name}  mIoU {iou:.3f}" for name, (_, iou) in zip(names, worst, strict=True)],
    )
    scores = [iou for _, iou in worst]
    print(
        "lowest per-image mIoU:\n" + "\n".join(f"  {iou:.4f}  {name}" for name, iou in zip(names, scores, strict=True))
    )
    return [
        {"index": index, "image": image, "mask": mask, "mean_iou": iou}
        for (index, iou), (image, mask) in zip(worst, files, strict=True)
    ]


if __name__ == "__main__":
    main()
