"""Class weights for the cross-entropy terms: counted from training masks (inverse, median frequency) or given."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from hfseg.errors import HfsegError

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
