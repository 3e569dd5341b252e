"""Rows of a source -> model inputs: decode image and mask, apply the `LabelSpec` once, check, transform.

Attached lazily with `Dataset.with_transform`, so images are decoded only when a batch needs them: images straight
to uint8 tensors by `torchvision.io.decode_image` (EXIF orientation applied), masks through `LabelSpec` (PIL).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets import Image as ImageFeature
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from hfseg.data.labels import LabelSpec, check_same_size, load_rgb

#: File signatures of the formats `torchvision.io.decode_image` reads: JPEG, PNG, WebP (RIFF), GIF.
TORCHVISION_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF", b"GIF8")


def describe(image, fallback: str) -> str:
    """A name for error messages: the file an image was read from (PIL image or undecoded row), else `fallback`."""
    if isinstance(image, dict):
        return image.get("path") or fallback
    return getattr(image, "filename", "") or fallback


def decode_rgb(image) -> torch.Tensor:
    """An image (PIL, or an undecoded `datasets.Image` row {'bytes', 'path'}) -> (3, H, W) uint8 RGB tensor,
    EXIF orientation applied.

    JPEG (CMYK too), PNG, WebP and GIF are decoded by torchvision, with the same pixels as PIL; other formats
    (TIFF, BMP, ...) and 16-bit PNGs through PIL (`load_rgb`).
    """
    if isinstance(image, dict):
        data = image.get("bytes")
        if data is None and image.get("path") and os.path.isfile(image["path"]):
            with open(image["path"], "rb") as file:
                data = file.read()
        if data is None:  # a remote path: datasets' own decoder knows how to open it
            image = ImageFeature().decode_example(image)
        else:
            tensor = _decode_with_torchvision(data)
            if tensor is not None:
                return tensor
            image = Image.open(io.BytesIO(data))
    return TF.pil_to_tensor(load_rgb(image))


def _decode_with_torchvision(data: bytes) -> torch.Tensor | None:
    """(3, H, W) uint8 from encoded bytes, or None for what torchvision does not decode to 8-bit RGB.

    None also for a file torchvision cannot read (truncated, damaged): PIL then reads it or names the problem,
    as it did before torchvision decoded images.
    """
    if not data.startswith(TORCHVISION_SIGNATURES):
        return None
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            tensor = decode_image(
                torch.frombuffer(bytearray(data), dtype=torch.uint8),
                mode=ImageReadMode.RGB,
                apply_exif_orientation=True,
            )
        except RuntimeError:
            return None
    return tensor if tensor.dtype == torch.uint8 else None  # 16-bit PNGs: PIL's 8-bit conversion, as before


def encode_pair(image, mask, spec: LabelSpec, source: str = "sample"):
    """PIL image + PIL mask -> (RGB PIL image, (H, W) int64 labels), sizes checked."""
    name = describe(mask, source)
    rgb = load_rgb(image)
    labels = spec.labels_of(mask, name)
    check_same_size(labels.shape, rgb.size, name, describe(image, source))
    return rgb, labels


def decode_pair(image, mask, spec: LabelSpec, source: str = "sample") -> tuple[torch.Tensor, np.ndarray]:
    """A row's image + mask (PIL, or undecoded {'bytes', 'path'}) -> ((3, H, W) uint8 RGB tensor, (H, W) int64
    labels), sizes checked. Masks are read by PIL and decoded by the `LabelSpec` (palettes, 16-bit)."""
    name = describe(mask, source)
    pixels = decode_rgb(image)
    labels = spec.labels_of(open_image(mask), name)
    check_same_size(labels.shape, (pixels.shape[-1], pixels.shape[-2]), name, describe(image, source))
    return pixels, labels


def open_image(image) -> Image.Image:
    """A PIL image as it is; an undecoded `datasets.Image` row {'bytes', 'path'} opened with PIL."""
    if not isinstance(image, dict):
        return image
    if image.get("bytes") is not None:
        return Image.open(io.BytesIO(image["bytes"]))
    if image.get("path") and os.path.isfile(image["path"]):
        return Image.open(image["path"])
    return ImageFeature().decode_example(image)  # a remote path


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
            pixels, label = decode_pair(image, mask, self.spec, source=f"row {index} of the batch")
            pixel, label = self.transform(pixels, label)
            pixel_values.append(pixel)
            labels.append(label)
        return {"pixel_values": pixel_values, "labels": labels}


def attach_transform(dataset: Dataset, image_column: str, label_column: str, spec: LabelSpec, transform) -> Dataset:
    """The dataset, decoding and transforming lazily on access (a streamed one as it is iterated)."""
    row_transform = RowTransform(image_column, label_column, spec, transform)
    dataset = undecoded(dataset, (image_column, label_column))
    if isinstance(dataset, IterableDataset):
        return StreamedPairs(dataset, row_transform)
    return dataset.with_transform(row_transform)


def undecoded(dataset, columns: tuple[str, ...]):
    """`dataset` with its `datasets.Image` columns left encoded ({'bytes', 'path'}), so that `decode_pair` decodes
    them (torchvision for images) instead of datasets (PIL). Columns with a `mode` conversion stay as they are."""
    features = getattr(dataset, "features", None) or {}
    for column in columns:
        feature = features.get(column)
        if isinstance(feature, ImageFeature) and feature.decode and feature.mode is None:
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    return dataset


class StreamedPairs(torch.utils.data.IterableDataset):
    """A streamed `datasets.IterableDataset` as model inputs, row by row (train with --max_steps)."""

    def __init__(self, dataset: IterableDataset, row_transform: RowTransform):
        self.dataset = dataset
        self.row_transform = row_transform

    def __iter__(self):
        for row in self.dataset:  # datasets shards the stream across DataLoader workers itself
            example = self.row_transform({key: [value] for key, value in row.items()})
            yield {"pixel_values": example["pixel_values"][0], "labels": example["labels"][0]}
