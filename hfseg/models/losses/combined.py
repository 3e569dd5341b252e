"""The training loss: a weighted sum of named terms (`--loss ce:1,lovasz:0.5`) on logits upsampled to the labels'
size, for a softmax head (multiclass) or a single-logit sigmoid head (binary), plus the auxiliary-head term of
UperNet/BEiT/DPT."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hfseg.config import BINARY_LOSSES, LOSSES, MULTICLASS_LOSSES, TASKS, default_loss, parse_loss
from hfseg.errors import HfsegError
from hfseg.models.losses.class_weights import check_class_weights, class_weights_from_counts, count_label_pixels
from hfseg.models.losses.lovasz import lovasz_hinge, lovasz_softmax
from hfseg.models.losses.pixelwise import binary_cross_entropy, cross_entropy, focal_loss, ohem_cross_entropy
from hfseg.models.losses.region import dice_loss, jaccard_loss, tversky_loss


class SegmentationLoss(nn.Module):
    """The training loss: `loss(logits, labels, auxiliary_logits=None)`.

    Args:
        loss: terms and weights, e.g. `ce`, `ce_dice` (ce + dice_weight * dice), `ce:1,lovasz:0.5`, `bce,dice`;
            None: ce, or bce for the binary task.
        class_weights: (C,) weights of the ce, ohem and focal terms, or None.
        label_smoothing: cross-entropy label smoothing.
        dice_weight: weight of the Dice term in ce_dice.
        aux_loss_weight: weight of the same loss on auxiliary-head logits when the model has one.
        ignore_index: label value that never counts.
        task: multiclass (softmax over C >= 2 channels) or binary (one foreground logit, labels 0/1).
        focal_gamma, focal_alpha: focal exponent and positive-class balance (None: no balance).
        tversky_alpha, tversky_beta: Tversky weights of false positives and false negatives.
        ohem_thresh, ohem_min_kept: OHEM probability threshold (None: keep the hardest by loss) and pixels kept
            per image at least.
        pos_weight: bce weight of foreground pixels (binary).
    """

    def __init__(
        self,
        loss: str | None = None,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        dice_weight: float = 1.0,
        aux_loss_weight: float = 0.4,
        ignore_index: int = 255,
        task: str = "multiclass",
        focal_gamma: float = 2.0,
        focal_alpha: float | None = None,
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
        ohem_thresh: float | None = 0.7,
        ohem_min_kept: int = 100000,
        pos_weight: float | None = None,
    ):
        super().__init__()
        if task not in TASKS:
            raise HfsegError(f"--task: unknown task '{task}'; use one of {', '.join(TASKS)}")
        loss = loss or default_loss(task)
        self.terms = parse_loss(loss, dice_weight)
        allowed = BINARY_LOSSES if task == "binary" else MULTICLASS_LOSSES
        for name, _ in self.terms:
            if name not in allowed:
                fix = "bce (sigmoid) instead of ce/ohem" if task == "binary" else "--task binary for bce"
                raise HfsegError(
                    f"--loss {name} does not apply to --task {task} (it takes {', '.join(allowed)}); use {fix}"
                )
        if task == "binary" and class_weights is not None:
            raise HfsegError("--class_weights/--class_weighting do not apply to --task binary; use --pos_weight")
        self.loss = loss
        self.task = task
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.label_smoothing = label_smoothing
        self.aux_loss_weight = aux_loss_weight
        self.ignore_index = ignore_index
        self.focal_gamma, self.focal_alpha = focal_gamma, focal_alpha
        self.tversky_alpha, self.tversky_beta = tversky_alpha, tversky_beta
        self.ohem_thresh, self.ohem_min_kept = ohem_thresh, ohem_min_kept
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, auxiliary_logits: torch.Tensor | None = None):
        """logits (B, C, h, w) (and auxiliary (B, C, h', w')) are upsampled to labels (B, H, W)."""
        loss = self._single(logits, labels)
        if auxiliary_logits is not None and self.aux_loss_weight:
            loss = loss + self.aux_loss_weight * self._single(auxiliary_logits, labels)
        return loss

    def _single(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check_inputs(logits, labels)
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        logits = logits.float()
        total = logits.new_zeros(())
        for name, weight in self.terms:
            total = total + weight * self.term(name, logits, labels)
        return total

    def term(self, name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One named loss of `logits: (B, C, H, W)` at the labels' size."""
        ignore_index = self.ignore_index
        weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        if name == "ce":
            return cross_entropy(logits, labels, ignore_index, weights, self.label_smoothing)
        if name == "ohem":
            return ohem_cross_entropy(logits, labels, ignore_index, self.ohem_thresh, self.ohem_min_kept, weights)
        if name == "focal":
            return focal_loss(logits, labels, ignore_index, self.focal_gamma, self.focal_alpha, weights)
        if name == "bce":
            return binary_cross_entropy(logits, labels, ignore_index, self.pos_weight)
        if name == "dice":
            return dice_loss(logits, labels, ignore_index)
        if name == "tversky":
            return tversky_loss(logits, labels, ignore_index, self.tversky_alpha, self.tversky_beta)
        if name == "jaccard":
            return jaccard_loss(logits, labels, ignore_index)
        if name == "lovasz":
            lovasz = lovasz_hinge if self.task == "binary" else lovasz_softmax
            return lovasz(logits, labels, ignore_index)
        raise HfsegError(f"--loss: unknown loss '{name}'; use one of {', '.join(LOSSES)}")

    def _check_inputs(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        channels = logits.shape[1]
        if self.task == "multiclass" and channels == 1:
            raise HfsegError(
                "the model has one output channel (num_labels=1), where softmax losses are constant; for a "
                "foreground/background mask use --task binary (sigmoid, bce), or give id2label two classes"
            )
        if self.task == "binary":
            if channels != 1:
                raise HfsegError(
                    f"--task binary needs a model with one output channel (num_labels=1), got {channels}; build "
                    "the model with --task binary, or use --task multiclass"
                )
            values = labels[(labels != self.ignore_index)]
            if values.numel() and (values.min() < 0 or values.max() > 1):
                found = sorted({int(v) for v in values.unique()[:8]})
                raise HfsegError(
                    f"--task binary: mask values {found} found, expected 0 (background), 1 (foreground) or "
                    f"{self.ignore_index} (ignored); map them with --label_map, e.g. '{{\"255\": 1}}' with "
                    "--ignore_index -100"
                )
        if self.class_weights is not None:
            check_class_weights(self.class_weights.numel(), channels)


def build_loss(args, model_config, ignore_index: int = 255, train_masks: Iterable[np.ndarray] | None = None):
    """The `SegmentationLoss` that `SegTrainingArguments` describe.

    The task follows the model: one output channel (num_labels=1) is a binary sigmoid head.

    Args:
        args: has loss, class_weights, class_weighting, label_smoothing, dice_weight, aux_loss_weight, focal_gamma,
            focal_alpha, tversky_alpha, tversky_beta, ohem_thresh, ohem_min_kept, pos_weight.
        model_config: the model's config (num_labels; auxiliary_loss_weight when args leave it unset).
        train_masks: encoded training masks, read only when `class_weighting` needs pixel frequencies.
    """
    num_labels = model_config.num_labels
    task = "binary" if num_labels == 1 else "multiclass"
    class_weights = args.class_weights
    if class_weights is None and args.class_weighting != "none" and task == "multiclass":
        if train_masks is None:
            raise HfsegError(f"--class_weighting {args.class_weighting} needs the training masks to count pixels")
        counts = count_label_pixels(train_masks, num_labels, ignore_index)
        class_weights = class_weights_from_counts(counts, args.class_weighting)
    if class_weights is not None:
        check_class_weights(len(class_weights), num_labels)
    aux_loss_weight = args.aux_loss_weight
    if aux_loss_weight is None:
        aux_loss_weight = getattr(model_config, "auxiliary_loss_weight", 0.4)
    return SegmentationLoss(
        args.loss,
        class_weights,
        args.label_smoothing,
        args.dice_weight,
        aux_loss_weight,
        ignore_index,
        task=task,
        focal_gamma=args.focal_gamma,
        focal_alpha=args.focal_alpha,
        tversky_alpha=args.tversky_alpha,
        tversky_beta=args.tversky_beta,
        ohem_thresh=args.ohem_thresh,
        ohem_min_kept=args.ohem_min_kept,
        pos_weight=args.pos_weight,
    )
