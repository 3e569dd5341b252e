"""Region losses on soft predictions: Tversky, and Dice and soft Jaccard as its special cases.

`logits: (B, C, H, W)` at the labels' size (softmax over C classes, or sigmoid of one foreground channel),
`labels: (B, H, W)` int64; pixels equal to `ignore_index` count neither as prediction nor as target.
"""

from __future__ import annotations

import torch

from hfseg.models.losses.pixelwise import targets, zero_loss


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the classes, or the sigmoid of a single foreground channel."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)


def tversky_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 0.0,
    skip_absent: bool = True,
    eps: float = 1e-7,
) -> torch.Tensor:
    """1 - TP / (TP + alpha FP + beta FN), per class over the whole batch, averaged over classes.

    alpha weighs false positives, beta false negatives: alpha = beta = 0.5 is Dice, alpha = beta = 1 is soft
    Jaccard (IoU). With `skip_absent` (smp's convention) a class with no labelled pixel in the batch adds 0 to the
    mean over all classes.
    """
    valid = labels != ignore_index
    predicted = probabilities(logits) * valid.unsqueeze(1)
    target = targets(logits, labels, valid)
    dims = (0, 2, 3)
    true_positives = (predicted * target).sum(dims)
    false_positives = predicted.sum(dims) - true_positives
    target_sums = target.sum(dims)
    false_negatives = target_sums - true_positives
    denominator = true_positives + alpha * false_positives + beta * false_negatives + smooth
    loss = 1.0 - (true_positives + smooth) / denominator.clamp_min(eps)
    if skip_absent:
        loss = loss * (target_sums > 0)
    # An all-ignored crop scores 0; chosen on the device, as an `if` here would sync it every step.
    return torch.where(valid.any(), loss.mean(), zero_loss(logits))


def jaccard_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Soft Jaccard (IoU) loss: 1 - soft IoU per class, averaged over classes (absent classes add 0)."""
    return tversky_loss(logits, labels, ignore_index, alpha=1.0, beta=1.0)


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, smooth: float = 1.0):
    """Soft Dice loss 1 - (2 TP + smooth) / (|P| + |T| + smooth), averaged over all classes.

    Args:
        logits: (B, C, H, W) at the labels' size.
        labels: (B, H, W) int64; pixels equal to `ignore_index` do not count.
    """
    # (2 TP + s) / (|P| + |T| + s) is the Tversky index with alpha = beta = 1/2 and smooth s/2.
    return tversky_loss(logits, labels, ignore_index, alpha=0.5, beta=0.5, smooth=smooth / 2, skip_absent=False)
