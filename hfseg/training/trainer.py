"""SegTrainer: `transformers.Trainer` with segmentation evaluation at the labels' own resolution.

Per evaluation batch, logits are upsampled to each label's size, argmax'ed and reduced to per-sample
confusion matrices; only those (B, C, C) tensors cross processes and reach `compute_metrics`, so
evaluation memory does not grow with the number or the size of the images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from hfseg.errors import HfsegError
from hfseg.evaluation.inference import InferenceOptions, iter_logits_at_sizes, scores_as_logits
from hfseg.evaluation.metrics import check_label_range, confusion_and_out_of_range
from hfseg.models.binary import binary_logits_as_two_classes
from hfseg.models.build import is_mask_classification, processor_input_size
from hfseg.models.freezing import backbone_parameter_names
from hfseg.models.lora import base_model_of, is_peft_model, load_adapter_weights
from hfseg.models.mask_classification import (
    LossParts,
    follow_training_mode,
    saved_for_inference,
    supervise_every_decoder_layer,
    use_average_num_masks,
    with_task_inputs,
)
from hfseg.models.param_groups import no_decay_parameter_names, parameter_groups
from hfseg.training.backbone_freezing import FreezeBackboneCallback
from hfseg.training.checkpoints import load_checkpoint_weights, save_checkpoint_atomically
from hfseg.training.interrupts import StopOnNonFiniteLoss, current_learning_rate


class SegTrainer(Trainer):
    """Trainer for `AutoModelForSemanticSegmentation` models.

    Args:
        ignore_index: label value never trained on nor scored (padding of labels uses it too).
        inference_options: how evaluation computes logits (whole/slide, TTA); default: from the `--eval_*`
            fields of `args`, slide defaults from the image processor's size.
        loss_fn: `hfseg.models.losses.SegmentationLoss` (or any `(logits, labels, auxiliary_logits) -> loss`);
            None keeps the model's own loss.
        A mask-classification model (Mask2Former, MaskFormer, OneFormer, EoMT) trains with its own loss on the
        batch's `mask_labels` / `class_labels` (`collate_segmentation(mask_targets=True)`); its main and auxiliary
        parts are logged as `loss_main` and `loss_aux`. OneFormer also gets its `task_inputs` (from its config) and,
        with `config.is_training`, the batch's `text_inputs`.
        text_tokenizer: saved next to the model and in every checkpoint (OneFormer's CLIP tokenizer, which
            transformers' pipeline loads to build its task inputs).
        Other arguments are `Trainer`'s. `args.head_lr_mult` (SegTrainingArguments) sets the head's lr multiple;
        `args.freeze_backbone` / `args.freeze_backbone_steps` freeze the encoder (`FreezeBackboneCallback`).
    """

    def __init__(
        self,
        *args,
        ignore_index: int = 255,
        inference_options: InferenceOptions | None = None,
        loss_fn=None,
        text_tokenizer=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.text_tokenizer = text_tokenizer
        if self.args.gradient_checkpointing and not getattr(self.model, "supports_gradient_checkpointing", False):
            raise HfsegError(
                f"--gradient_checkpointing: {type(self.model).__name__} does not support it in transformers; drop the "
                "flag (SegFormer, BEiT, DPT, DINOv2, Swin and MobileViT models do)"
            )
        self.ignore_index = ignore_index
        self._staging_run_dir = None
        if inference_options is None:
            input_size = processor_input_size(self.processing_class) if self.processing_class is not None else None
            inference_options = InferenceOptions.from_arguments(self.args).with_input_size(input_size)
        self.inference_options = inference_options
        if getattr(self.args, "channels_last", False):
            self.model.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn
        self.unfreeze_step = getattr(self.args, "freeze_backbone_steps", 0)
        if getattr(self.args, "freeze_backbone", False) or self.unfreeze_step:
            self.add_callback(FreezeBackboneCallback(self.model, self.unfreeze_step))
        self.loss_guard = StopOnNonFiniteLoss()
        self.add_callback(self.loss_guard)
        self._auxiliary_logits = None
        self.loss_parts = None
        if is_mask_classification(self.model):
            if loss_fn is not None:
                raise HfsegError(f"{type(self.model).__name__} trains with its own loss; pass loss_fn=None")
            use_average_num_masks(self.model)
            follow_training_mode(self.model)  # OneFormer: text encoder and pixel-decoder dropout in training only
            supervise_every_decoder_layer(self.model)  # MaskFormer: the per-layer terms transformers cannot compute
            self.loss_parts = LossParts(self.model)
            self.model_accepts_loss_kwargs = False  # its loss is a per-batch mean: Trainer scales it for accumulation
            self._loss_parts_sum = None
            self._loss_parts_count = 0
        if loss_fn is not None:
            self.loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides by accumulation steps
            auxiliary_head = getattr(self.model, "auxiliary_head", None)
            if auxiliary_head is not None:  # UperNet/BEiT/DPT return no auxiliary logits: catch them on the way
                auxiliary_head.register_forward_hook(self._keep_auxiliary_logits)

    def _keep_auxiliary_logits(self, module, inputs, output):
        self._auxiliary_logits = output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {key: value for key, value in inputs.items() if key not in ("label_sizes", "pixel_sizes")}
        if self.loss_parts is not None:
            return self._compute_mask_classification_loss(model, inputs, return_outputs)
        if self.loss_fn is None or "labels" not in inputs:
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        else:
            labels = inputs.pop("labels")
            self._auxiliary_logits = None
            outputs = model(**{**inputs, "pixel_values": self._pixel_values(inputs)})
            loss = self.loss_fn(outputs.logits, labels, self._auxiliary_logits)
            self._auxiliary_logits = None
            result = (loss, outputs) if return_outputs else loss
        if model.training:  # checked at logging/saving steps: a check here would sync the device every step
            loss = result[0] if return_outputs else result
            self.loss_guard.record(loss, self.state.global_step + 1, current_learning_rate(self))
        return result

    def _compute_mask_classification_loss(self, model, inputs, return_outputs: bool):
        """The model's own loss on `mask_labels` / `class_labels` (the label map itself is for evaluation only)."""
        inputs = {key: value for key, value in inputs.items() if key != "labels"}
        inputs["pixel_values"] = self._pixel_values(inputs)
        self.loss_parts.pop()  # nothing left over from a pass that computed no loss
        outputs = model(**with_task_inputs(self.model, inputs))
        loss = outputs.loss
        parts = self.loss_parts.pop()
        if model.training:
            self.loss_guard.record(loss, self.state.global_step + 1, current_learning_rate(self))
            if parts is not None:
                parts = torch.stack(parts)
                self._loss_parts_sum = parts if self._loss_parts_sum is None else self._loss_parts_sum + parts
                self._loss_parts_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Adds `loss_main` / `loss_aux` (mask-classification models) to the training loss logs: their mean over the
        batches since the last log, averaged over processes."""
        if self.loss_parts is not None and "loss" in logs and self._loss_parts_count:
            parts = self.accelerator.reduce(self._loss_parts_sum / self._loss_parts_count, reduction="mean")
            logs = {**logs, "loss_main": round(parts[0].item(), 4), "loss_aux": round(parts[1].item(), 4)}
            self._loss_parts_sum, self._loss_parts_count = None, 0
        super().log(logs, *args, **kwargs)

    def get_decay_parameter_names(self, model) -> list[str]:
        """Everything but biases, norm layers and position embeddings."""
        no_decay = no_decay_parameter_names(model)
        return [name for name, _ in model.named_parameters() if name not in no_decay]

    def create_optimizer(self, model=None):
        """The optimizer `args.optim` names, over `hfseg.models.param_groups.parameter_groups` (head lr x head_lr_mult,
        layer-wise decay x layer_decay_rate)."""
        from transformers.trainer_optimizer import is_optimizer_factory

        model = self.model if model is None else model
        if self.optimizer is not None:
            return self.optimizer
        optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
            self.args, model
        )
        if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            return super().create_optimizer(model)  # optimizers that pick their own parameters (GaLore, LOMO...)
        groups = parameter_groups(
            base_model_of(model),
            self.args.learning_rate,
            self.args.weight_decay,
            head_lr_mult=getattr(self.args, "head_lr_mult", 1.0),
            layer_decay_rate=getattr(self.args, "layer_decay_rate", 1.0),
            layer_decay_num_layers=getattr(self.args, "layer_decay_num_layers", None),
            # The same groups before and after unfreezing, so a resumed optimizer state always matches.
            also_frozen=backbone_parameter_names(base_model_of(model)) if self.unfreeze_step else frozenset(),
        )
        groups = [{key: value for key, value in group.items() if key != "names"} for group in groups]
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _run_epoch(self, *args, **kwargs):
        """No epoch starts once `max_steps` is reached: Trainer checks it only after a step, so a run resumed from
        its last checkpoint (killed while saving the final model) would train one step more."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        """Checkpoints are written to a staging dir and renamed into place when complete; never after a NaN loss."""
        self.loss_guard.check(self.args.output_dir)
        save_checkpoint_atomically(self, super()._save_checkpoint, model, trial)

    def _get_output_dir(self, trial):
        return self._staging_run_dir or super()._get_output_dir(trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Weights through `from_pretrained` (Trainer's raw, non-strict load misses renamed keys)."""
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        if is_peft_model(self.model):
            return load_adapter_weights(self.model, resume_from_checkpoint)
        load_checkpoint_weights(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)

    def _load_best_model(self):
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        if is_peft_model(self.model):
            return load_adapter_weights(self.model, self.state.best_model_checkpoint)
        load_checkpoint_weights(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Returns (loss, per-sample confusion matrices (B, C, C), dummy labels (B,)), all on the device.

        The sizes are read once per batch; per sample nothing leaves the device. With `args.eval_bf16` the forward
        passes run under bfloat16 autocast and the logits are scored in fp32. A mask-classification model's class
        scores are scored as `scores_as_logits` (its loss: cross-entropy of the per-pixel normalised scores).
        """
        inputs = self._prepare_inputs(inputs)
        labels = inputs["labels"]
        sizes = inputs.get("label_sizes")
        sizes = [tuple(labels.shape[-2:])] * labels.shape[0] if sizes is None else sizes.tolist()
        pixel_sizes = inputs.get("pixel_sizes")
        num_labels = max(model.config.num_labels, 2)  # one sigmoid logit is scored as two classes
        loss_sum = torch.zeros((), device=labels.device)
        counted = torch.zeros((), dtype=torch.int64, device=labels.device)
        out_of_range = torch.zeros((), dtype=torch.int64, device=labels.device)
        confusions = []
        mask_classification = is_mask_classification(model)
        autocast = torch.autocast(
            labels.device.type, dtype=torch.bfloat16, enabled=getattr(self.args, "eval_bf16", False)
        )
        with torch.no_grad(), self.compute_loss_context_manager(), autocast:
            # One sample's full-resolution logits at a time: upsample, score, drop.
            per_sample = iter_logits_at_sizes(
                model,
                self._pixel_values(inputs),
                sizes,
                options=self.inference_options,
                pixel_sizes=None if pixel_sizes is None else pixel_sizes.tolist(),
            )
            for logits, label, (height, width) in zip(per_sample, labels, sizes, strict=True):
                if logits.shape[0] == 1:  # one sigmoid logit: scored as background/foreground at the threshold
                    logits = binary_logits_as_two_classes(logits[None], getattr(self.args, "threshold", 0.5))[0]
                label = label[:height, :width]
                logits = scores_as_logits(logits) if mask_classification else logits.float()
                # Out-of-range labels are reported below; scored as ignored so no kernel asserts on them first.
                scored = torch.where((label >= 0) & (label < num_labels), label, self.ignore_index)
                loss_sum += F.cross_entropy(
                    logits[None], scored[None], ignore_index=self.ignore_index, reduction="sum"
                )
                counted += (scored != self.ignore_index).sum()
                confusion, bad = confusion_and_out_of_range(logits.argmax(0), label, num_labels, self.ignore_index)
                confusions.append(confusion)
                out_of_range += bad
                del logits  # before the generator upsamples the next sample
        if out_of_range:  # one read per batch
            check_label_range(labels, num_labels, self.ignore_index)
        loss = (loss_sum / counted.clamp(min=1)).detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, torch.stack(confusions), torch.zeros(len(confusions), device=labels.device)

    def floating_point_ops(self, inputs) -> int:
        """Trainer's estimate, which hashes `model.main_input_name`: OneFormer's class names a list of two
        (`pixel_values`, `task_inputs`), a TypeError there; it gets no estimate (0, as models without one)."""
        if isinstance(getattr(self.model, "main_input_name", None), list):
            return 0
        return super().floating_point_ops(inputs)

    def _pixel_values(self, inputs) -> torch.Tensor:
        """The batch's images, channels-last when `args.channels_last` (the model's weights are too)."""
        pixel_values = inputs["pixel_values"]
        if getattr(self.args, "channels_last", False):
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return pixel_values

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """Save without Trainer's own push: with `--push_to_hub`, hfseg pushes once the card, eval results and
        pictures exist (`hfseg.hub.push.push_finished_run`), and only the files worth publishing."""
        with saved_for_inference(self.model):
            super().save_model(output_dir, _internal_call=True)
        if self.text_tokenizer is not None and self.args.should_save:
            self.text_tokenizer.save_pretrained(output_dir or self.args.output_dir)
