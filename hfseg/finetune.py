"""Fine-tune a semantic-segmentation model: parse -> data -> model -> SegTrainer -> train/eval/save.

accelerate launch hfseg/finetune.py --recipe demo [--field value ...]
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import sys
from pathlib import Path

from transformers import set_seed

from hfseg.adapters import build_label_spec, load_source
from hfseg.collate import collate_segmentation
from hfseg.config import parse_args, save_resolved_config
from hfseg.doctor import check_source
from hfseg.errors import strip_debug, user_errors_exit
from hfseg.hub import write_model_card
from hfseg.inference import predict_masks
from hfseg.metrics import TrainerSegmentationMetrics
from hfseg.modeling import build_image_processor, build_model, processor_input_size, processor_mean_std
from hfseg.preprocess import attach_transform, encode_pair
from hfseg.trainer import SegTrainer
from hfseg.transforms import EvalTransform, TrainTransform
from hfseg.visualize import save_prediction_grid, save_training_curves

logger = logging.getLogger("hfseg")


@user_errors_exit
def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(strip_debug(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)

    # Source -> label spec -> transforms.
    source = load_source(data_args, seed=training_args.seed)
    spec = build_label_spec(source, data_args)
    check_source(source, spec, data_args)  # stops on broken pairs, or drops them with --skip_bad_samples
    processor = build_image_processor(model_args)
    mean, std = processor_mean_std(processor)
    train_transform = TrainTransform(
        data_args.crop_size,
        data_args.scale_range,
        data_args.cat_max_ratio,
        data_args.hflip_prob,
        data_args.photometric,
        mean,
        std,
        data_args.ignore_index,
    )
    eval_transform = EvalTransform(processor_input_size(processor), mean, std)
    columns = (source.image_column, source.label_column)
    train_dataset = attach_transform(source.dataset["train"], *columns, spec, train_transform)
    eval_dataset = attach_transform(source.dataset["validation"], *columns, spec, eval_transform)

    # Model -> trainer.
    model = build_model(model_args, spec.id2label, data_args.ignore_index)
    trainer = SegTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=functools.partial(collate_segmentation, ignore_index=data_args.ignore_index),
        compute_metrics=TrainerSegmentationMetrics(spec.id2label, data_args.ignore_index),
        processing_class=processor,
        ignore_index=data_args.ignore_index,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", {k: v for k, v in metrics.items() if not isinstance(v, list)})
    trainer.save_metrics("eval", metrics)

    if trainer.is_world_process_zero():
        save_outputs(
            training_args.output_dir,
            trainer,
            source,
            spec,
            eval_transform,
            metrics,
            (model_args, data_args, training_args),
            data_args.num_preview_images,
        )
    return metrics


def save_outputs(output_dir, trainer, source, spec, eval_transform, metrics, arguments, num_preview: int) -> None:
    """Resolved config, prediction grid, training curves and the model card next to the model."""
    output_dir = Path(output_dir)
    config_path = save_resolved_config(output_dir, *arguments)
    preview_rows = []
    validation = source.dataset["validation"]
    for index, row in enumerate(itertools.islice(validation, num_preview)):  # streamed sources have no len()
        image, truth = encode_pair(row[source.image_column], row[source.label_column], spec, f"validation row {index}")
        preview_rows.append((image, truth))
    if preview_rows:
        predictions = predict_masks(trainer.model, [image for image, _ in preview_rows], eval_transform)
        save_prediction_grid(
            [
                (image, truth, prediction.numpy())
                for (image, truth), prediction in zip(preview_rows, predictions, strict=True)
            ],
            spec.id2label,
            output_dir / "predictions.png",
            title=f"mIoU {metrics.get('eval_mean_iou', 0):.3f}",
        )
    save_training_curves(trainer.state.log_history, output_dir / "training_curves.png")
    model_args, data_args, training_args = arguments
    import yaml

    config = yaml.safe_load(config_path.read_text())
    write_model_card(
        output_dir,
        metrics=metrics,
        id2label=spec.id2label,
        model_name=output_dir.name,
        config=config,
        base_model=model_args.model_name_or_path if not model_args.model_type else None,
        dataset_name=data_args.dataset_name or data_args.layout,
        predictions_image="predictions.png" if preview_rows else None,
        model_ref=training_args.hub_model_id or str(output_dir),
    )
    logger.info("saved model, processor, card and pictures to %s", output_dir)
    logger.info("eval metrics: %s", json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}))


if __name__ == "__main__":
    main()
