"""What every adapter returns, and the split handling they share."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from datasets import Dataset, DatasetDict, Features, Image

from hfseg.data.labels import MaskError
from hfseg.errors import HfsegError

logger = logging.getLogger(__name__)

VALIDATION_SPLIT_NAMES = ("validation", "val", "valid", "test")


@dataclass
class SourceData:
    """Image/mask pairs of one source.

    Attributes:
        dataset: splits of a `datasets.Dataset` with an image column and a mask column.
        image_column / label_column: the column names.
        id2label: class names of the final labels, when the source knows them (else None).
        reduce_labels: the source's own convention when it has one (ADE20K: True); None = use the flag.
        label_map: raw value -> final id table the source needs (Cityscapes labelIds), if any.
        palette: palette id -> (R, G, B) for colour-coded masks, if any.
        problems: what the adapter found while pairing files (an image without a mask, ...): `hfseg doctor`
            reports them and training stops on them unless --skip_bad_samples.
    """

    dataset: DatasetDict
    image_column: str
    label_column: str
    id2label: dict[int, str] | None
    reduce_labels: bool | None = None
    label_map: dict[int, int] | None = None
    palette: dict[int, tuple[int, int, int]] | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Problem:
    """One thing wrong with a source: the file, what was found, and the fix."""

    kind: str
    file: str
    found: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.found}; {self.fix}"

    @classmethod
    def from_error(cls, error: MaskError) -> Problem:
        """The problem a `MaskError` describes, with the same kind, file, finding and fix."""
        return cls(error.kind, error.source, error.found, error.fix)


def split_names(dataset, data_args) -> tuple[str, str | None]:
    """(train split, validation split or None) a source's splits give under `--train_split`/`--validation_split`:
    the named validation split, else the first of validation/val/valid/test that is not the train split.

    Raises:
        HfsegError: a named split that the source does not have.
    """
    train_split = data_args.train_split
    if train_split not in dataset:
        raise HfsegError(f"split '{train_split}' not found (splits: {list(dataset)}); set --train_split")
    validation_split = data_args.validation_split
    if validation_split is None:
        found = (name for name in VALIDATION_SPLIT_NAMES if name in dataset and name != train_split)
        return train_split, next(found, None)
    if validation_split not in dataset:
        raise HfsegError(f"split '{validation_split}' not found (splits: {list(dataset)}); set --validation_split")
    return train_split, validation_split


def split_train_validation(dataset: DatasetDict, data_args, seed: int = 0) -> DatasetDict:
    """Return a DatasetDict with `train` and `validation`, honouring the split flags and sample caps."""
    train_split, validation_split = split_names(dataset, data_args)
    if validation_split is None:
        rows, fraction = len(dataset[train_split]), data_args.validation_fraction
        if not (0 < fraction < 1 and math.ceil(rows * fraction) < rows):  # datasets holds out ceil(share)
            raise HfsegError(
                f"--validation_fraction {fraction}: the source has no validation split among {list(dataset)}, and "
                f"holding out that share of the {rows} rows of split '{train_split}' leaves no train or no "
                "validation pair; give a fraction between 0 and 1 that keeps both, or name one with --validation_split"
            )
        held_out = dataset[train_split].train_test_split(test_size=fraction, seed=seed)
        splits = {"train": held_out["train"], "validation": held_out["test"]}
        fraction = data_args.validation_fraction
        origin = {
            "train": f"split '{train_split}' less the held-out part",
            "validation": f"the part held out from split '{train_split}' (--validation_fraction {fraction}: the "
            f"source has no validation split among {list(dataset)}; name one with --validation_split)",
        }
    else:
        splits = {"train": dataset[train_split], "validation": dataset[validation_split]}
        origin = {"train": f"split '{train_split}'", "validation": f"split '{validation_split}'"}
    sizes = {name: len(rows) for name, rows in splits.items()}
    for name, cap in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if cap is not None and len(splits[name]) > cap:
            splits[name] = splits[name].select(range(cap))
        if len(splits[name]) == 0:
            raise HfsegError(
                f"the {name} split is empty; check --{'train' if name == 'train' else 'validation'}_split "
                "and the data source"
            )
    for name, rows in splits.items():
        capped = f" (capped from {sizes[name]})" if len(rows) < sizes[name] else ""
        logger.info("%s: %d pairs%s from %s", name, len(rows), capped, origin[name])
    return DatasetDict(splits)


def undecoded(dataset, columns: tuple[str, ...]):
    """`dataset` (map-style or streamed) with its `datasets.Image` columns left encoded ({'bytes', 'path'}): a
    file is known (and reported) by its path, and training decodes images with torchvision instead of PIL.
    Columns with a `mode` conversion stay as they are."""
    features = getattr(dataset, "features", None) or {}
    for column in columns:
        feature = features.get(column)
        if isinstance(feature, Image) and feature.decode and feature.mode is None:
            dataset = dataset.cast_column(column, Image(decode=False))
    return dataset


def row_files(dataset: Dataset, indices: list[int], columns: tuple[str, str]) -> list[tuple[str | None, ...]]:
    """(image file, mask file) of each row in `indices`, None where a row holds no path (in-memory or Hub
    images stored as bytes without a name)."""
    rows = undecoded(dataset, columns)

    def file_of(value) -> str | None:
        if isinstance(value, str):
            return value
        return (value.get("path") if isinstance(value, dict) else getattr(value, "filename", None)) or None

    return [tuple(file_of(rows[index][column]) for column in columns) for index in indices]


def pairs_to_dataset(pairs: dict[str, list[tuple[str, str]]]) -> DatasetDict:
    """`{split: [(image path, mask path), ...]}` -> DatasetDict of lazily decoded `image`/`annotation` columns.

    Only the paths are stored; images are opened when a row is read.
    """
    features = Features({"image": Image(), "annotation": Image()})
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {"image": [str(image) for image, _ in rows], "annotation": [str(mask) for _, mask in rows]},
                features=features,
            )
            for split, rows in pairs.items()
            if rows
        }
    )
