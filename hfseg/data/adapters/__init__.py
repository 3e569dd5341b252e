"""Data sources -> `SourceData`: a DatasetDict of image/mask pairs plus the label names.

`load_source(data_args)` picks the adapter from the arguments: `--dataset_name synthetic`, a Hub id or
local datasets folder (`hub.py`), or `--data_dir` with `--layout` (`layouts.py`, one module per layout).
`build_label_spec` turns the source's label convention and the label flags into the one `LabelSpec`.
"""

from __future__ import annotations

import dataclasses
import logging

from hfseg.config import DataArguments
from hfseg.data.adapters.base import Problem, SourceData, split_train_validation
from hfseg.data.adapters.hub import load_hub_or_local_dataset
from hfseg.data.labels import LabelSpec, load_id2label, load_label_map, load_palette
from hfseg.data.synthetic import SYNTHETIC_ID2LABEL, make_synthetic_dataset
from hfseg.errors import HfsegError

__all__ = [
    "Problem",
    "SourceData",
    "build_label_spec",
    "label_spec_for_model",
    "load_source",
    "open_source",
    "with_saved_ignore_index",
]

logger = logging.getLogger(__name__)


def open_source(data_args: DataArguments, seed: int = 0) -> SourceData:
    """The data the arguments name, with the source's own splits and the label flags applied.

    `id2label` may still be None here (`hfseg doctor` reports it); `load_source` requires it.
    """
    if data_args.data_dir and data_args.layout:
        from hfseg.data.adapters.layouts import load_layout

        source = load_layout(data_args.layout, data_args.data_dir, data_args)
    elif data_args.data_dir and not data_args.dataset_name:
        raise HfsegError(f"--data_dir {data_args.data_dir} needs --layout (folder, voc, ade20k, cityscapes, ...)")
    elif data_args.dataset_name == "synthetic":
        dataset = make_synthetic_dataset(data_args.synthetic_train_size, data_args.synthetic_eval_size, seed=seed)
        source = SourceData(dataset, "image", "annotation", dict(SYNTHETIC_ID2LABEL))
    elif data_args.dataset_name:
        source = load_hub_or_local_dataset(data_args)
    else:
        raise HfsegError(
            "no data given: pass --dataset_name (Hub id, local folder or 'synthetic') or --data_dir DIR --layout NAME"
        )
    if data_args.palette_file:
        source.palette, names = load_palette(data_args.palette_file)
        if source.id2label is None and names:
            source.id2label = {i: name for i, name in names.items() if i != data_args.ignore_index}
    if data_args.id2label_file:
        source.id2label = load_id2label(data_args.id2label_file)
    if data_args.label_map:
        if source.label_map:
            logger.info("--label_map replaces the %s layout's own label table", data_args.layout)
        source.label_map = load_label_map(data_args.label_map)
    return source


def load_source(data_args: DataArguments, seed: int = 0) -> SourceData:
    """Load the data the arguments name, with train and validation splits."""
    source = open_source(data_args, seed)
    if source.id2label is None:
        raise HfsegError(
            f"no class names found for {data_args.dataset_name or data_args.data_dir}; "
            "pass --id2label_file with a JSON {id: name} of the final classes (or put id2label.json in the folder)"
        )
    if data_args.streaming:
        from hfseg.data.adapters.hub import split_streaming

        source.dataset = split_streaming(source.dataset, data_args)
    else:
        source.dataset = split_train_validation(source.dataset, data_args, seed)
    return source


def build_label_spec(source: SourceData, data_args: DataArguments) -> LabelSpec:
    """The one `LabelSpec` of a run: the source's convention unless the flags say otherwise.

    `--reduce_labels` wins over the source's default; an explicit `--label_map` turns the source's
    reduce-labels default off (a label map is itself the whole remapping).
    """
    if data_args.reduce_labels is not None:
        reduce_labels = data_args.reduce_labels
    else:
        reduce_labels = bool(source.reduce_labels) and not data_args.label_map
    if source.id2label is None:
        raise HfsegError("no class names: pass --id2label_file with a JSON {id: name} of the final classes")
    return LabelSpec(source.id2label, data_args.ignore_index, reduce_labels, source.label_map, source.palette)


def with_saved_ignore_index(data_args: DataArguments, saved: LabelSpec | None, where: str) -> DataArguments:
    """`data_args` whose `ignore_index` is the saved model's (`--ignore_index` left out is None here).

    Set before the source is opened: layouts build their label tables with it.

    Raises:
        HfsegError: `--ignore_index` contradicts the saved one, naming both values.
    """
    given = data_args.ignore_index
    if saved is None:
        default = next(f.default for f in dataclasses.fields(DataArguments) if f.name == "ignore_index")
        return dataclasses.replace(data_args, ignore_index=default if given is None else given)
    if given is not None and given != saved.ignore_index:
        raise contradiction("--ignore_index", given, "ignore_index", saved.ignore_index, where)
    return dataclasses.replace(data_args, ignore_index=saved.ignore_index)


def label_spec_for_model(
    source: SourceData, data_args: DataArguments, model_id2label: dict, saved: LabelSpec | None, where: str
) -> LabelSpec:
    """The `LabelSpec` to score a saved model with: the one it was trained with (`saved`), or for a model saved
    without one, the data's convention and flags with the model's class names.

    Raises:
        HfsegError: the data name other classes than the model (count or names), or a label flag or the
            layout's own label table contradicts the saved handling; each message names both values.
    """
    model_id2label = {int(k): str(v) for k, v in model_id2label.items()}
    check_same_classes(source.id2label, model_id2label, where)
    if saved is None:
        source.id2label = model_id2label
        return build_label_spec(source, data_args)
    if data_args.reduce_labels is not None and data_args.reduce_labels != saved.reduce_labels:
        raise contradiction("--reduce_labels", data_args.reduce_labels, "reduce_labels", saved.reduce_labels, where)
    if source.label_map and source.label_map != saved.label_map:
        flag = "--label_map" if data_args.label_map else f"the {data_args.layout} layout's label table"
        raise contradiction(flag, source.label_map, "label_map", saved.label_map, where)
    if data_args.palette_file and source.palette != saved.palette:
        raise contradiction("--palette_file", source.palette, "palette", saved.palette, where)
    return saved


def check_same_classes(data_id2label: dict | None, model_id2label: dict[int, str], where: str) -> None:
    """Data that name their classes must name the model's, in its order (case and spaces aside)."""
    if data_id2label is None:
        return
    if len(data_id2label) != len(model_id2label):
        raise HfsegError(
            f"the data have {len(data_id2label)} classes but the model has {len(model_id2label)}; evaluate on the "
            "data the model was trained for, or pass --id2label_file / --reduce_labels to match its classes"
        )
    for index, name in sorted(model_id2label.items()):
        data_name = str(data_id2label.get(index, data_id2label.get(str(index))))
        if data_name.strip().casefold() != name.strip().casefold():
            raise HfsegError(
                f"the data call class {index} '{data_name}' but the model ({where}) calls it '{name}'; evaluate on "
                "data with the model's classes, or pass --id2label_file with the model's names if they are the same "
                "classes"
            )


def contradiction(flag: str, given, name: str, saved, where: str) -> HfsegError:
    """The error for a label setting that contradicts the one saved with the model."""
    return HfsegError(
        f"{flag} {given} contradicts the model's {name} {saved} (saved in {where}); leave {flag} out to use the "
        "model's, or use a model trained with it"
    )
