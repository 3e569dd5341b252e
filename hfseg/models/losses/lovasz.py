"""Lovász losses (Berman et al. 2018): convex surrogates of the IoU, softmax for classes and hinge for binary masks.

`logits: (B, C, H, W)` at the labels' size, `labels: (B, H, W)` int64; ignored pixels are dropped; one Lovász
extension over all labelled pixels of the batch (not per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hfseg.models.losses.pixelwise import zero_loss


def lovasz_grad(sorted_targets: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at targets sorted by decreasing error: (P, K) -> (P, K)."""
    totals = sorted_targets.sum(dim=0)
    intersection = totals - sorted_targets.cumsum(dim=0)
    union = totals + (1.0 - sorted_targets).cumsum(dim=0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)


def lovasz_softmax(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Lovász-softmax: mean over the classes present among the labelled pixels of the batch."""
    valid = labels != ignore_index
    if not valid.any():
        return zero_loss(logits)
    probabilities = logits.softmax(dim=1).movedim(1, -1)[valid]  # (P, C)
    foreground = F.one_hot(labels[valid], logits.shape[1]).to(probabilities.dtype)  # (P, C)
    errors_sorted, order = (foreground - probabilities).abs().sort(dim=0, descending=True)
    per_class = (errors_sorted * lovasz_grad(foreground.gather(0, order))).sum(dim=0)
    return per_class[foreground.sum(dim=0) > 0].mean()


def lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Binary Lovász hinge of one foreground logit channel `logits: (B, 1, H, W)` against 0/1 labels."""
    valid = labels != ignore_index
    if not valid.any():
        return zero_loss(logits)
    scores = logits[:, 0][valid]
    foreground = labels[valid].to(scores.dtype)
    errors_sorted, order = (1.0 - scores * (2.0 * foreground - 1.0)).sort(descending=True)
    return torch.dot(F.relu(errors_sorted), lovasz_grad(foreground[order].unsqueeze(1)).squeeze(1))
