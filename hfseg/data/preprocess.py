"""Rows of a source -> model inputs: decode image and mask, apply the `LabelSpec` once, check, transform.

Attached lazily with `Dataset.with_transform`, so images are decoded only when a batch needs them: images straight
to uint8 tensors by `torchvision.io.decode_image` (EXIF orientation applied; 16-bit and float images in their own
type, `read_rgb_bands`), masks through `LabelSpec` (PIL).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets import Image as ImageFeature
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from hfseg.data.adapters.base import undecoded
from hfseg.data.bands import is_high_bit_depth, read_bands, read_rgb_bands
from hfseg.data.checks import inspect_pair
from hfseg.data.labels import LabelSpec, check_same_size, exif_orientation, load_rgb
from hfseg.errors import HfsegError

logger = logging.getLogger(__name__)

#: Where `CheckedPairs` lists the pairs it skipped, in the run's output dir.
SKIPPED_FILE = "skipped_samples.txt"

#: File signatures of the formats `torchvision.io.decode_image` reads: JPEG, PNG, WebP (RIFF), GIF.
TORCHVISION_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF", b"GIF8")


def describe(image, fallback: str) -> str:
    """A name for error messages: the file an image was read from (PIL image or undecoded row), else `fallback`."""
    if isinstance(image, dict):
        return image.get("path") or fallback
    return getattr(image, "filename", "") or fallback


def decode_rgb(image) -> torch.Tensor:
    """An image (PIL, or an undecoded `datasets.Image` row {'bytes', 'path'}) -> (3, H, W) RGB tensor, EXIF
    orientation applied: uint8 for 8-bit images; 16-bit and float images (`is_high_bit_depth`) in their own type,
    uint16 or float32, gray repeated and alpha dropped (`read_rgb_bands`), scaled at normalisation by the type's
    maximum as with `--num_channels`.

    JPEG (CMYK too), PNG (16-bit too), WebP and GIF are decoded by torchvision, with the same pixels as PIL (as
    `read_rgb_bands` for 16-bit PNGs); other formats (TIFF, BMP, ...) through PIL (`load_rgb`), 16-bit and float
    TIFFs through `read_rgb_bands`.
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
            row = {"bytes": data, "path": image.get("path")}
            if is_high_bit_depth(row):
                return read_rgb_bands(row)
            image = Image.open(io.BytesIO(data))
    if is_high_bit_depth(image):
        return read_rgb_bands(image)
    return TF.pil_to_tensor(load_rgb(image))


def _decode_with_torchvision(data: bytes) -> torch.Tensor | None:
    """(3, H, W) RGB from encoded bytes, uint8 (uint16 for a 16-bit PNG), or None for what torchvision does not
    decode.

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
    return tensor


def encode_pair(image, mask, spec: LabelSpec, source: str = "sample", num_channels: int | None = None):
    """A row's image + mask (PIL, or undecoded {'bytes', 'path'}) -> (RGB PIL image, (H, W) int64 labels), sizes
    checked; a 16-bit or float image, and any image with `num_channels` other than 3, as the (C, H, W) tensor
    training reads (`decode_pair`)."""
    if is_band_input(num_channels) or is_high_bit_depth(image):
        return decode_pair(image, mask, spec, source, num_channels)
    name = describe(mask, source)
    image = open_image(image)
    orientation = exif_orientation(image)  # datasets has applied it already; a PIL image opened by path has not
    rgb = load_rgb(image)
    labels = spec.labels_of(open_image(mask), name)
    check_same_size(labels.shape, rgb.size, name, describe(image, source), orientation)
    return rgb, labels


def decode_pair(
    image, mask, spec: LabelSpec, source: str = "sample", num_channels: int | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """A row's image + mask (PIL, or undecoded {'bytes', 'path'}) -> ((3, H, W) RGB tensor (`decode_rgb`: uint8,
    or uint16/float32 for 16-bit and float images), (H, W) int64 labels), sizes checked. Masks are read by PIL and
    decoded by the `LabelSpec` (palettes, 16-bit).

    With `num_channels` other than 3 the image is read with its own bands and type: (C, H, W) uint8, uint16 or
    float32 (`hfseg.data.bands.read_bands`).
    """
    name = describe(mask, source)
    if is_band_input(num_channels):
        pixels = read_bands(image, num_channels, describe(image, source))
    else:
        pixels = decode_rgb(image)
    labels = spec.labels_of(open_image(mask), name)
    check_same_size(labels.shape, (pixels.shape[-1], pixels.shape[-2]), name, describe(image, source))
    return pixels, labels


def is_band_input(num_channels: int | None) -> bool:
    """Whether images are read by band (`read_bands`) rather than as RGB (the default, `decode_rgb`)."""
    return num_channels is not None and num_channels != 3


def rows_for(dataset, columns: tuple[str, str]):
    """Rows to `encode_pair` one by one, their image files undecoded: PIL (datasets' decoder) reads 16-bit colour
    PNGs and TIFFs as 8 bits, and multi-band TIFFs not at all."""
    return undecoded(dataset, columns)


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

    def __init__(self, image_column: str, label_column: str, spec: LabelSpec, transform: Callable, num_channels=None):
        self.image_column = image_column
        self.label_column = label_column
        self.spec = spec
        self.transform = transform
        self.num_channels = num_channels

    def __call__(self, batch: dict) -> dict:
        pixel_values, labels = [], []
        for index, (image, mask) in enumerate(zip(batch[self.image_column], batch[self.label_column], strict=True)):
            pixels, label = decode_pair(image, mask, self.spec, f"row {index} of the batch", self.num_channels)
            pixel, label = self.transform(pixels, label)
            pixel_values.append(pixel)
            labels.append(label)
        return {"pixel_values": pixel_values, "labels": labels}


def attach_transform(
    dataset: Dataset,
    image_column: str,
    label_column: str,
    spec: LabelSpec,
    transform,
    split: str | None = None,
    skipped_file: str | Path | None = None,
    num_channels: int | None = None,
) -> Dataset:
    """The dataset, decoding and transforming lazily on access (a streamed one as it is iterated).

    With `split`, a map-style dataset becomes `CheckedPairs` and a streamed one checks its rows as they come: a
    pair that fails is named by file, split and row (`skipped_file`: listed there and replaced, or left out of the
    stream, instead). `num_channels` other than 3 reads images by band (`decode_pair`).
    """
    row_transform = RowTransform(image_column, label_column, spec, transform, num_channels)
    dataset = undecoded(dataset, (image_column, label_column))
    if isinstance(dataset, IterableDataset):
        return StreamedPairs(dataset, row_transform, split, skipped_file)
    transformed = dataset.with_transform(row_transform)
    if split is None:
        return transformed
    return CheckedPairs(transformed, dataset, (image_column, label_column), spec, split, skipped_file)


class BadPair(HfsegError):
    """A pair that training could not use, found past the pairs checked before training."""

    def __init__(self, message: str):
        # torch's DataLoader re-raises a worker's error as its type called with the worker's whole traceback
        if message.startswith(f"Caught {type(self).__name__} "):
            message = message.rstrip().splitlines()[-1].partition(f"{type(self).__name__}: ")[2]
        super().__init__(message)


def skip_or_raise(where: str, problems: list, skipped_file: Path | None, error: Exception) -> None:
    """A pair that failed during the run: raise `BadPair` naming it and the fixes, or (with `skipped_file`, i.e.
    --skip_bad_samples) list it there and log it."""
    if skipped_file is None:
        raise BadPair(
            f"{where}: {'; '.join(str(problem) for problem in problems)} (found during the run: the check before "
            "training reads the first --check_samples pairs per split); remove the pair, pass --skip_bad_samples "
            "to skip such pairs, or --check_samples -1 to check every pair before training"
        ) from error
    with Path(skipped_file).open("a") as listing:  # appended: DataLoader workers each add their own
        listing.write(f"{where}\t{problems[0].file}\t{problems[0].found}\n")
    logger.warning("--skip_bad_samples: skipping %s: %s", where, problems[0])


class CheckedPairs(torch.utils.data.Dataset):
    """A transformed split whose broken pairs (past the `--check_samples` scan) are named, or skipped when asked.

    A failing `dataset[index]` is inspected again from its undecoded row (as `hfseg doctor` would): a broken
    pair raises `BadPair` naming the file, split and row and the fixes; with `skipped_file` the pair is appended
    to that file and the next usable pair stands in for it (the batch keeps its size; outside the train split
    its labels are all ignored, so no pair is scored twice). A failure that the pair's
    files do not explain is raised as it is.
    """

    def __init__(self, dataset, rows: Dataset, columns: tuple[str, str], spec: LabelSpec, split: str, skipped_file):
        self.dataset = dataset
        self.rows = rows
        self.columns = columns
        self.spec = spec
        self.split = split
        self.skipped_file = Path(skipped_file) if skipped_file is not None else None
        self.skipped: set[int] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        for offset in range(len(self)):
            position = (int(index) + offset) % len(self)
            if position in self.skipped:  # found broken in an earlier epoch: not decoded again
                continue
            try:
                example = self.dataset[position]
            except Exception as error:
                problems = self.problems_at(position)
                if not problems:
                    raise
                skip_or_raise(f"{self.split} row {position}", problems, self.skipped_file, error)
                self.skipped.add(position)
                continue
            if position != int(index) and self.split != "train":
                # A stand-in keeps the batch's size but must not be scored twice: all of its pixels are ignored.
                example = {**example, "labels": torch.full_like(example["labels"], self.spec.ignore_index)}
            return example
        raise HfsegError(f"no pair of the {self.split} split can be read; fix the data (see `hfseg doctor`)")

    def problems_at(self, position: int) -> list:
        row = undecoded(self.rows, self.columns)[position]
        return inspect_pair(row[self.columns[0]], row[self.columns[1]], self.spec, f"{self.split} row {position}")[3]


def report_skipped(path: str | Path) -> list[str]:
    """Log the pairs `CheckedPairs` skipped (listed in `path`, one `split row N<TAB>file<TAB>finding` line each)
    and return them without repeats."""
    path = Path(path)
    lines = list(dict.fromkeys(path.read_text().splitlines())) if path.is_file() else []
    if lines:
        listing = "\n".join("  - " + line.replace("\t", ": ") for line in lines)
        logger.warning(
            "--skip_bad_samples: %d pair(s) skipped during the run (listed in %s):\n%s", len(lines), path, listing
        )
    return lines


class StreamedPairs(torch.utils.data.IterableDataset):
    """A streamed `datasets.IterableDataset` as model inputs, row by row (train with --max_steps)."""

    def __init__(self, dataset: IterableDataset, row_transform: RowTransform, split=None, skipped_file=None):
        self.dataset = dataset
        self.row_transform = row_transform
        self.split = split
        self.skipped_file = skipped_file

    def __iter__(self):
        for index, row in enumerate(self.dataset):  # datasets shards the stream across DataLoader workers itself
            try:
                example = self.row_transform({key: [value] for key, value in row.items()})
            except Exception as error:
                if self.split is None:
                    raise
                transform = self.row_transform
                where = f"{self.split} streamed row {index}"
                image, mask = row[transform.image_column], row[transform.label_column]
                problems = inspect_pair(image, mask, transform.spec, where)[3]
                if not problems:
                    raise
                skip_or_raise(where, problems, self.skipped_file, error)
                continue
            yield {"pixel_values": example["pixel_values"][0], "labels": example["labels"][0]}
