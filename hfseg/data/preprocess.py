"""Rows of a source -> model inputs: decode image and mask, apply the `LabelSpec` once, check, transform.

Attached lazily with `Dataset.with_transform`, so images are decoded only when a batch needs them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from datasets import Dataset, IterableDataset

from hfseg.data.labels import LabelSpec, check_same_size, load_rgb


def describe(image, fallback: str) -> str:
    """A name for error messages: the file a PIL image was read from, else `fallback`."""
    return getattr(image, "filename", "") or fallback


def encode_pair(image, mask, spec: LabelSpec, source: str = "sample"):
    """PIL image + PIL mask -> (RGB PIL image, (H, W) int64 labels), sizes checked."""
    name = describe(mask, source)
    rgb = load_rgb(image)
    labels = spec.labels_of(mask, name)
    check_same_size(labels.shape, rgb.size, name, describe(image, source))
    return rgb, labels


class RowTransform:
    """Batch-of-rows -> {'pixel_values': [...], 'labels': [...]} for `Dataset.with_transform`."""

    def __init__(self, image_column: str, label_column: str, spec: LabelSpec, transform: Callable):
        self.image_column = image_column
        self.label_column = label_column
        self.spec = spec
        self.transform = transform

    def __call__(self, batch: dict) -> dict:
        pixel_values, labels = [], []
        for index, (image, mask) in enumerate(zip(batch[self.image_column], batch[self.label_column], strict=True)):
            rgb, label = encode_pair(image, mask, self.spec, source=f"row {index} of the batch")
            pixel, label = self.transform(rgb, label)
            pixel_values.append(pixel)
            labels.append(label)
        return {"pixel_values": pixel_values, "labels": labels}


def attach_transform(dataset: Dataset, image_column: str, label_column: str, spec: LabelSpec, transform) -> Dataset:
    """The dataset, decoding and transforming lazily on access (a streamed one as it is iterated)."""
    row_transform = RowTransform(image_column, label_column, spec, transform)
    if isinstance(dataset, IterableDataset):
        return StreamedPairs(dataset, row_transform)
    return dataset.with_transform(row_transform)


class StreamedPairs(torch.utils.data.IterableDataset):
    """A streamed `datasets.IterableDataset` as model inputs, row by row (train with --max_steps)."""

    def __init__(self, dataset: IterableDataset, row_transform: RowTransform):
        self.dataset = dataset
        self.row_transform = row_transform

    def __iter__(self):
        for row in self.dataset:  # datasets shards the stream across DataLoader workers itself
            example = self.row_transform({key: [value] for key, value in row.items()})
            yield {"pixel_values": example["pixel_values"][0], "labels": example["labels"][0]}
