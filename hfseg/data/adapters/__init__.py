"""Data sources -> `SourceData`: a DatasetDict of image/mask pairs plus the label names.

`load_source(data_args)` picks the adapter from the arguments: `--dataset_name synthetic`, a Hub id or
local datasets folder (`hub.py`), or `--data_dir` with `--layout` (`layouts.py`, one module per layout).
`build_label_spec` turns the source's label convention and the label flags into the one `LabelSpec`.
"""

from __future__ import annotations

import logging

from hfseg.config import DataArguments
from hfseg.data.adapters.base import Problem, SourceData, split_train_validation
from hfseg.data.adapters.hub import load_hub_or_local_dataset
from hfseg.data.labels import LabelSpec, load_id2label, load_label_map, load_palette
from hfseg.data.synthetic import SYNTHETIC_ID2LABEL, make_synthetic_dataset
from hfseg.errors import HfsegError

__all__ = ["Problem", "SourceData", "build_label_spec", "load_source", "open_source"]

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
