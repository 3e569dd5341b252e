"""Semantic maps -> mask-classification targets: one binary mask and one class id per class present.

Mask2Former, MaskFormer, OneFormer and EoMT train on a set of (class id, binary mask) pairs per image rather than a
per-pixel label map. Ignored pixels are 0 in every mask and never a class; an image (or crop) that is all ignore has
no masks at all, which the models' Hungarian-matched loss accepts (every query is then matched to "no object").
"""

from __future__ import annotations

import torch


def mask_targets(labels: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (H, W) int -> (mask_labels (K, H, W) float 0/1, class_labels (K,) int64), K = classes present.

    Classes come in increasing id order; `ignore_index` is left out of every mask (a value the label spec maps to a
    class, e.g. 255 in a 0/255 binary set with another ignore index, is a class like any other).
    """
    class_labels = torch.unique(labels)
    class_labels = class_labels[class_labels != ignore_index].long()
    mask_labels = (labels[None] == class_labels[:, None, None]).float()
    return mask_labels, class_labels


def batch_mask_targets(labels: list[torch.Tensor], ignore_index: int = 255) -> dict[str, list[torch.Tensor]]:
    """Per-image (H_i, W_i) label maps -> {"mask_labels": [(K_i, H_i, W_i)], "class_labels": [(K_i,)]}: lists, not
    stacked, since every image has its own number of classes."""
    targets = [mask_targets(label, ignore_index) for label in labels]
    return {"mask_labels": [masks for masks, _ in targets], "class_labels": [classes for _, classes in targets]}
