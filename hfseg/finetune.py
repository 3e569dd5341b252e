"""Fine-tune a semantic-segmentation model: parse -> data -> model -> SegTrainer -> train/eval/save.

hfseg finetune --recipe demo [--field value ...]               # wherever hfseg is installed
accelerate launch -m hfseg.finetune --recipe demo [...]        # under accelerate, wherever hfseg is installed
accelerate launch hfseg/finetune.py --recipe demo [...]        # the same from a clone of the repository
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import sys
from pathlib import Path

from transformers import set_seed

from hfseg.config import parse_args, save_resolved_config
from hfseg.data.adapters import build_label_spec, load_source
from hfseg.data.collate import collate_segmentation
from hfseg.data.determinism import seed_samples
from hfseg.data.doctor import check_source
from hfseg.data.preprocess import SKIPPED_FILE, attach_transform, encode_pair, report_skipped, rows_for
from hfseg.data.transforms import TrainTransform
from hfseg.errors import HfsegError, require_writable_dir, strip_debug, user_errors_exit
from hfseg.evaluation.inference import InferenceOptions, eval_transform_for, predict_masks
from hfseg.evaluation.metrics import TrainerSegmentationMetrics
from hfseg.evaluation.visualize import save_prediction_grid, save_training_curves
from hfseg.hub.card import write_model_card
from hfseg.hub.network import hub_sources, require_hub_sources
from hfseg.hub.push import prepare_hub_push, push_finished_run
from hfseg.models.binary import check_binary_options, export_binary_head, resolve_task
from hfseg.models.build import (
    build_image_processor,
    build_model,
    build_tokenizer,
    builds_mask_classification,
    is_mask_classification,
    processor_input_size,
    processor_mean_std,
)
from hfseg.models.lora import (
    apply_lora,
    is_peft_model,
    merged_model,
    parameter_counts,
    read_parameter_counts,
    save_adapter,
    training_method,
    write_parameter_counts,
)
from hfseg.models.losses import build_loss, training_masks
from hfseg.models.mask_classification import check_mask_classification_options, text_queries_for
from hfseg.models.vit_backbone import align_sizes_to_patch
from hfseg.training.checkpoints import mark_complete, mark_incomplete, prepare_output_dir, save_final_model
from hfseg.training.interrupts import train
from hfseg.training.output_lock import lock_output_dir
from hfseg.training.trainer import SegTrainer

logger = logging.getLogger("hfseg")


@user_errors_exit
def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args(strip_debug(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # Checks that need nothing on disk come before the lock, which creates the output dir.
    require_hub_sources(hub_sources(model_args, data_args), model_args.revision)  # every one that cannot load
    prepare_hub_push(training_args)  # the token stays out of saved files; no token or no Hub fails now
    require_writable_dir(training_args.output_dir, "--output_dir")
    with lock_output_dir(training_args):  # one run per output dir; released however the run ends
        return run(model_args, data_args, training_args)


def run(model_args, data_args, training_args) -> dict:
    """Train, evaluate and save one run into `training_args.output_dir` (which the caller holds locked)."""
    set_seed(training_args.seed)
    resume_from_checkpoint = prepare_output_dir(training_args)  # refuses another run's dir, writes nothing

    # Source -> label spec -> transforms.
    source = load_source(data_args, seed=training_args.seed)
    spec = build_label_spec(source, data_args)
    check_source(source, spec, data_args)  # stops on broken pairs, or drops them with --skip_bad_samples
    if model_args.task == "auto":  # binary for two classes, unless the model family or the loss says otherwise
        mask_classification = builds_mask_classification(model_args)
        model_args.task = resolve_task("auto", spec.id2label, mask_classification, training_args.loss)
    processor = build_image_processor(model_args)
    align_sizes_to_patch(model_args, data_args, training_args, processor)  # ViT backbones: multiples of the patch
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
    inference_options = InferenceOptions.from_arguments(training_args).with_input_size(processor_input_size(processor))
    if model_args.task == "binary":
        check_binary_options(training_args.threshold, inference_options)
    eval_transform = eval_transform_for(processor, inference_options)
    columns = (source.image_column, source.label_column)
    # A pair that breaks past the check is named (split, row, file), or with --skip_bad_samples listed and replaced.
    skipped_file = Path(training_args.output_dir) / SKIPPED_FILE if data_args.skip_bad_samples else None
    bands = model_args.num_channels  # other than 3: images read with their own bands and bit depth
    train_dataset = attach_transform(
        source.dataset["train"], *columns, spec, train_transform, "train", skipped_file, bands
    )
    train_dataset = seed_samples(train_dataset, training_args.seed)  # same augmentations after a resume
    eval_dataset = attach_transform(
        source.dataset["validation"], *columns, spec, eval_transform, "validation", skipped_file, bands
    )

    # Model -> trainer.
    model = build_model(model_args, spec.id2label, data_args.ignore_index)
    spec.save_to_config(model.config)  # config.json carries the label handling to evaluate, predict and the Hub
    tokenizer = build_tokenizer(model_args, model.config)  # OneFormer: its task (and text) inputs; None for others
    method = training_method(model_args, training_args)
    if method == "lora":  # adapters on the encoder, heads in full; merged back into a plain model after training
        model = apply_lora(
            model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout, model_args.lora_target_modules
        )
    mask_classification = is_mask_classification(model)  # Mask2Former & co.: their own loss on per-class masks
    text_queries = None
    if mask_classification:
        check_mask_classification_options(model.config.model_type, model_args.task, training_args)
        loss_fn = None
        text_queries = text_queries_for(model.config, tokenizer, spec.id2label)  # OneFormer's contrastive loss
    else:
        train_masks = training_masks(
            source.dataset["train"], source.label_column, spec, training_args.class_weighting_samples
        )
        loss_fn = build_loss(training_args, model.config, data_args.ignore_index, train_masks)
    trainer = SegTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=functools.partial(
            collate_segmentation,
            ignore_index=data_args.ignore_index,
            mask_targets=mask_classification,
            text_queries=text_queries,
        ),
        compute_metrics=TrainerSegmentationMetrics(
            spec.id2label, data_args.ignore_index, foreground=model_args.task == "binary"
        ),
        processing_class=processor,
        ignore_index=data_args.ignore_index,
        inference_options=inference_options,
        loss_fn=loss_fn,
        text_tokenizer=tokenizer,
    )
    counts = parameter_counts(trainer.model, method)  # after SegTrainer froze the encoder, if asked
    logger.info("trainable parameters: %d of %d (%.2f%%, %s)", counts["trainable"], counts["total"],
                100 * counts["share"], method)  # fmt: skip
    mark_incomplete(training_args)  # output_dir marked unfinished until its last file is written
    if skipped_file is not None and resume_from_checkpoint is None and training_args.process_index == 0:
        skipped_file.unlink(missing_ok=True)  # an earlier run's list (--overwrite_output_dir)
    train(trainer, resume_from_checkpoint)  # SIGINT/SIGTERM: checkpoint + how to resume; NaN loss: clear stop
    if trainer.args.should_save:
        write_parameter_counts(training_args.output_dir, counts)  # the card reads it
    if is_peft_model(trainer.model):  # adapter alone in output_dir/adapter; the merged model is what gets saved
        if trainer.args.should_save:
            save_adapter(trainer.model, training_args.output_dir)
        trainer.model = trainer.model_wrapped = merged_model(trainer.model)
    if model_args.task == "binary":  # saved as a two-class head that the plain pipeline thresholds by argmax
        export_binary_head(trainer.model, spec.id2label, training_args.threshold)
    save_final_model(trainer)  # temp dir + atomic renames
    metrics = trainer.evaluate()
    if math.isnan(metrics.get("eval_mean_iou", 0.0)):  # a NaN must never reach eval_results.json or the card
        raise HfsegError(
            f"the final evaluation scored no labelled pixel (validation mean IoU is NaN): every validation mask "
            f"pixel is ignore_index={data_args.ignore_index}; the model is saved in {training_args.output_dir} "
            "but no results or card were written. Fix the validation labels (`hfseg doctor` with the same data "
            "flags), or raise --check_samples so the data check sees them"
        )
    trainer.log_metrics("eval", {k: v for k, v in metrics.items() if not isinstance(v, list)})
    trainer.save_metrics("eval", metrics)
    if skipped_file is not None and trainer.is_world_process_zero():
        report_skipped(skipped_file)

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
        mark_complete(training_args.output_dir)
        if training_args.push_to_hub:
            push_finished_run(trainer)
    return metrics


def save_outputs(output_dir, trainer, source, spec, eval_transform, metrics, arguments, num_preview: int) -> None:
    """Resolved config, prediction grid, training curves and the model card next to the model."""
    output_dir = Path(output_dir)
    config_path = save_resolved_config(output_dir, *arguments)
    preview_rows = []
    num_channels = arguments[0].num_channels
    validation = rows_for(source.dataset["validation"], (source.image_column, source.label_column))
    for index, row in enumerate(itertools.islice(validation, num_preview)):  # streamed sources have no len()
        image, truth = encode_pair(
            row[source.image_column], row[source.label_column], spec, f"validation row {index}", num_channels
        )
        preview_rows.append((image, truth))
    if preview_rows:
        images = [image for image, _ in preview_rows]
        predictions = predict_masks(trainer.model, images, eval_transform, options=trainer.inference_options)
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
        parameter_counts=read_parameter_counts(output_dir),
    )
    logger.info("saved model, processor, card and pictures to %s", output_dir)
    logger.info("eval metrics: %s", json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}))


if __name__ == "__main__":
    main()
