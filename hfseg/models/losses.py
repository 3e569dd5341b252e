"""Losses the Trainer plugs in: cross-entropy with ignore index, class weights, label smoothing, Dice, CE+Dice,
and the auxiliary-head term of UperNet/BEiT/DPT; logits are upsampled to the labels' size first."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hfseg.errors import HfsegError

LOSSES = ("ce", "dice", "ce_dice")
CLASS_WEIGHTINGS = ("none", "inverse", "median_frequency")


def count_label_pixels(masks: Iterable[np.ndarray], num_labels: int, ignore_index: int = 255) -> np.ndarray:
    """Pixels per class over encoded masks (values 0..num_labels-1 or ignore_index) -> (num_labels,) int64."""
    counts = np.zeros(num_labels, dtype=np.int64)
    for mask in masks:
        values = np.asarray(mask).ravel()
        values = values[(values != ignore_index) & (values >= 0) & (values < num_labels)]
        counts += np.bincount(values.astype(np.int64), minlength=num_labels)
    return counts


def class_weights_from_counts(counts: Sequence[int], method: str = "median_frequency") -> list[float]:
    """Class weights from pixel counts.

    `inverse`: w_c = 1 / f_c, rescaled so the weights of present classes average 1.
    `median_frequency`: w_c = median(f) / f_c (Eigen & Fergus 2015; SegNet), median over present classes.
    Classes with no pixels get weight 0 (they contribute nothing to the loss anyway).
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise HfsegError("class weighting: the training masks read have no labelled pixels; check the label spec")
    frequencies = counts / counts.sum()
    weights = np.zeros_like(frequencies)
    if method == "inverse":
        weights[present] = 1.0 / frequencies[present]
        weights[present] /= weights[present].mean()
    elif method == "median_frequency":
        weights[present] = np.median(frequencies[present]) / frequencies[present]
    else:
        raise HfsegError(f"--class_weighting: unknown method '{method}'; use one of {', '.join(CLASS_WEIGHTINGS)}")
    return [float(w) for w in weights]


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, smooth: float = 1.0):
    """Soft Dice loss, averaged over classes.

    Args:
        logits: (B, C, H, W) at the labels' size.
        labels: (B, H, W) int64; pixels equal to `ignore_index` do not count.
    """
    num_labels = logits.shape[1]
    valid = (labels != ignore_index).unsqueeze(1)  # (B, 1, H, W)
    probabilities = logits.float().softmax(dim=1) * valid
    one_hot = F.one_hot(labels.clamp(0, num_labels - 1), num_labels).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    cardinality = probabilities.sum(dims) + one_hot.sum(dims)
    return 1.0 - ((2.0 * intersection + smooth) / (cardinality + smooth)).mean()


class SegmentationLoss(nn.Module):
    """The training loss: `loss(logits, labels, auxiliary_logits=None)`.

    Args:
        loss: ce, dice or ce_dice (ce + dice_weight * dice).
        class_weights: (C,) cross-entropy weights, or None.
        label_smoothing: cross-entropy label smoothing.
        dice_weight: weight of the Dice term in ce_dice.
        aux_loss_weight: weight of the same loss on auxiliary-head logits when the model has one.
        ignore_index: label value that never counts.
    """

    def __init__(
        self,
        loss: str = "ce",
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        dice_weight: float = 1.0,
        aux_loss_weight: float = 0.4,
        ignore_index: int = 255,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise HfsegError(f"--loss: unknown loss '{loss}'; use one of {', '.join(LOSSES)}")
        self.loss = loss
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.label_smoothing = label_smoothing
        self.dice_weight = dice_weight
        self.aux_loss_weight = aux_loss_weight
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, auxiliary_logits: torch.Tensor | None = None):
        """logits (B, C, h, w) (and auxiliary (B, C, h', w')) are upsampled to labels (B, H, W)."""
        loss = self._single(logits, labels)
        if auxiliary_logits is not None and self.aux_loss_weight:
            loss = loss + self.aux_loss_weight * self._single(auxiliary_logits, labels)
        return loss

    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`F.cross_entropy`'s weighted mean, as a sum over a denominator that never leaves the device.

        An all-ignored crop gives a zero sum over a zero denominator: the loss is 0 with a graph that still reaches
        every parameter (DDP needs it), and no `if` on a device tensor forces a host sync every step.
        """
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        summed = F.cross_entropy(
            logits,
            labels,
            weight=weight,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction="sum",
        )
        valid = labels != self.ignore_index
        if weight is None:
            denominator = valid.sum().to(summed.dtype)
        else:
            denominator = (weight[labels.clamp(0, logits.shape[1] - 1)] * valid).sum()
        return summed / torch.where(denominator > 0, denominator, torch.ones_like(denominator))

    def _single(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.class_weights is not None:
            check_class_weights(self.class_weights.numel(), logits.shape[1])
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        logits = logits.float()
        total = logits.new_zeros(())
        if self.loss in ("ce", "ce_dice"):
            total = total + self._cross_entropy(logits, labels)
        if self.loss in ("dice", "ce_dice"):
            scale = self.dice_weight if self.loss == "ce_dice" else 1.0
            total = total + scale * dice_loss(logits, labels, self.ignore_index)
        return total


def check_class_weights(count: int, num_labels: int) -> None:
    """One class weight per class, or an error that says so."""
    if count != num_labels:
        raise HfsegError(
            f"--class_weights has {count} values but there are {num_labels} classes; give one weight per class in "
            "id order"
        )


def training_masks(dataset, label_column: str, spec, limit: int):
    """Encoded (H, W) masks of the first `limit` rows of a source split (before augmentation)."""
    for index in range(min(limit, len(dataset))):
        mask = dataset[index][label_column]
        yield spec.labels_of(mask, getattr(mask, "filename", "") or f"train row {index}")


def build_loss(args, model_config, ignore_index: int = 255, train_masks: Iterable[np.ndarray] | None = None):
    """The `SegmentationLoss` that `SegTrainingArguments` describe.

    Args:
        args: has loss, class_weights, class_weighting, label_smoothing, dice_weight, aux_loss_weight.
        model_config: the model's config (num_labels; auxiliary_loss_weight when args leave it unset).
        train_masks: encoded training masks, read only when `class_weighting` needs pixel frequencies.
    """
    num_labels = model_config.num_labels
    class_weights = args.class_weights
    if class_weights is None and args.class_weighting != "none":
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
        args.loss, class_weights, args.label_smoothing, args.dice_weight, aux_loss_weight, ignore_index
    )
