"""Per-pixel losses: cross-entropy, OHEM cross-entropy, sigmoid focal and binary cross-entropy.

Every function takes logits at the labels' size, `logits: (B, C, H, W)` (C = 1 for a binary sigmoid head) and
`labels: (B, H, W)` int64, averages over the pixels that are not `ignore_index`, and returns a zero that still
reaches every logit when there are none (an all-ignored crop; DDP needs the graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def zero_loss(logits: torch.Tensor) -> torch.Tensor:
    """0 with a graph to every logit: the loss of a batch without a single labelled pixel."""
    return logits.sum() * 0.0


def targets(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float targets: one-hot over C classes, or the labels themselves (0/1) for one sigmoid channel.

    Ignored pixels get all-zero targets; callers mask them out of every sum.
    """
    if logits.shape[1] == 1:
        return (labels * valid).unsqueeze(1).to(logits.dtype)
    one_hot = F.one_hot(labels.where(valid, 0), logits.shape[1]).permute(0, 3, 1, 2)
    return (one_hot * valid.unsqueeze(1)).to(logits.dtype)


def cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Softmax cross-entropy: `F.cross_entropy`'s (weighted) mean, as a sum over a denominator that never leaves
    the device, so no `if` on a device tensor forces a host sync every step. An all-ignored crop gives a zero sum
    over a zero denominator: 0, with a graph that still reaches every logit."""
    weight = None if class_weights is None else class_weights.to(logits.device)
    summed = F.cross_entropy(
        logits, labels, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="sum"
    )
    valid = labels != ignore_index
    if weight is None:
        denominator = valid.sum().to(summed.dtype)
    else:
        denominator = (weight[labels.clamp(0, logits.shape[1] - 1)] * valid).sum()
    return summed / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


def ohem_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    thresh: float | None = 0.7,
    min_kept: int = 100000,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Online hard example mining cross-entropy, pixels picked as mmsegmentation's `OHEMPixelSampler` picks them.

    With `thresh`, a labelled pixel is kept when its probability of the true class is below
    max(thresh, p_k), p_k the (k+1)-th smallest such probability and k = min_kept x batch size (so at least about
    k pixels are kept); without `thresh`, the k pixels of highest loss are kept. The loss is the (class-weighted)
    mean cross-entropy of the kept pixels; the selection itself carries no gradient.
    """
    valid = labels != ignore_index
    if not valid.any():
        return zero_loss(logits)
    safe_labels = labels.where(valid, 0)
    pixel_losses = F.cross_entropy(logits, safe_labels, reduction="none")  # (B, H, W)
    batch_kept = min_kept * labels.shape[0]
    with torch.no_grad():
        kept = torch.zeros_like(valid)
        if thresh is not None:
            true_class_probs = logits.softmax(dim=1).gather(1, safe_labels.unsqueeze(1)).squeeze(1)
            sorted_probs = true_class_probs[valid].sort().values
            threshold = max(float(sorted_probs[min(batch_kept, sorted_probs.numel() - 1)]), thresh)
            kept = valid & (true_class_probs < threshold)
        else:
            valid_losses = pixel_losses[valid]
            hardest = valid_losses.sort(descending=True).indices[:batch_kept]
            selected = torch.zeros_like(valid_losses, dtype=torch.bool)
            selected[hardest] = True
            kept[valid] = selected
    if not kept.any():
        return zero_loss(logits)
    weights = kept.to(pixel_losses.dtype)
    if class_weights is not None:
        weights = weights * class_weights.to(logits.device)[safe_labels]
    return (pixel_losses * weights).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


def focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = 255,
    gamma: float = 2.0,
    alpha: float | None = None,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017), one-vs-all over the classes, as smp's and mmsegmentation's FocalLoss.

    Per class: mean over labelled pixels of (1 - p_t) ** gamma * BCE, times alpha for the class's pixels and
    (1 - alpha) for the others when `alpha` is set; then the (class-weighted) mean over classes. With one sigmoid
    channel this is the binary focal loss of the foreground.
    """
    valid = labels != ignore_index
    if not valid.any():
        return zero_loss(logits)
    target = targets(logits, labels, valid)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = (1.0 - torch.exp(-bce)).pow(gamma) * bce
    if alpha is not None:
        loss = loss * (alpha * target + (1.0 - alpha) * (1.0 - target))
    per_class = (loss * valid.unsqueeze(1)).sum(dim=(0, 2, 3)) / valid.sum()
    if class_weights is None:
        return per_class.mean()
    class_weights = class_weights.to(logits.device)
    return (per_class * class_weights).sum() / class_weights.sum()


def binary_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, pos_weight: float | None = None
) -> torch.Tensor:
    """BCE of one sigmoid channel `logits: (B, 1, H, W)` against 0/1 labels, mean over labelled pixels.

    `pos_weight` multiplies the loss of foreground pixels (torch's `pos_weight`), for rare foregrounds.
    """
    valid = labels != ignore_index
    if not valid.any():
        return zero_loss(logits)
    weight = None if pos_weight is None else logits.new_tensor([pos_weight])
    loss = F.binary_cross_entropy_with_logits(
        logits[:, 0][valid], labels[valid].to(logits.dtype), pos_weight=weight, reduction="mean"
    )
    return loss
