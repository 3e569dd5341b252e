"""Rows of a source -> model inputs: decode image and mask, apply the `LabelSpec` once, check, transform.

Attached lazily with `Dataset.with_transform`, so images are decoded only when a batch needs them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from datasets import Dataset, IterableDataset

from hfseg.data.adapters.base import undecoded
from hfseg.data.checks import inspect_pair
from hfseg.data.labels import LabelSpec, check_same_size, exif_orientation, load_rgb
from hfseg.errors import HfsegError

logger = logging.getLogger(__name__)

#: Where `CheckedPairs` lists the pairs it skipped, in the run's output dir.
SKIPPED_FILE = "skipped_samples.txt"


def describe(image, fallback: str) -> str:
    """A name for error messages: the file a PIL image was read from, else `fallback`."""
    return getattr(image, "filename", "") or fallback


def encode_pair(image, mask, spec: LabelSpec, source: str = "sample"):
    """PIL image + PIL mask -> (RGB PIL image, (H, W) int64 labels), sizes checked."""
    name = describe(mask, source)
    orientation = exif_orientation(image)  # datasets has applied it already; a PIL image opened by path has not
    rgb = load_rgb(image)
    labels = spec.labels_of(mask, name)
    check_same_size(labels.shape, rgb.size, name, describe(image, source), orientation)
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


def attach_transform(
    dataset: Dataset,
    image_column: str,
    label_column: str,
    spec: LabelSpec,
    transform,
    split: str | None = None,
    skipped_file: str | Path | None = None,
) -> Dataset:
    """The dataset, decoding and transforming lazily on access (a streamed one as it is iterated).

    With `split`, a map-style dataset becomes `CheckedPairs`: a pair that fails is named by file, split and row
    (`skipped_file`: listed there and replaced instead).
    """
    row_transform = RowTransform(image_column, label_column, spec, transform)
    if isinstance(dataset, IterableDataset):
        return StreamedPairs(dataset, row_transform)
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
                where = f"{self.split} row {position}"
                if self.skipped_file is None:
                    raise BadPair(
                        f"{where}: {'; '.join(str(problem) for problem in problems)} (found during the run: the "
                        "check before training reads the first --check_samples pairs per split); remove the pair, "
                        "pass --skip_bad_samples to skip such pairs, or --check_samples -1 to check every pair "
                        "before training"
                    ) from error
                self.skipped.add(position)
                with self.skipped_file.open("a") as listing:  # appended: DataLoader workers each add their own
                    listing.write(f"{where}\t{problems[0].file}\t{problems[0].found}\n")
                logger.warning("--skip_bad_samples: skipping %s: %s", where, problems[0])
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

    def __init__(self, dataset: IterableDataset, row_transform: RowTransform):
        self.dataset = dataset
        self.row_transform = row_transform

    def __iter__(self):
        for row in self.dataset:  # datasets shards the stream across DataLoader workers itself
            example = self.row_transform({key: [value] for key, value in row.items()})
            yield {"pixel_values": example["pixel_values"][0], "labels": example["labels"][0]}
