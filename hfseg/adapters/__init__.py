"""Data sources -> `SourceData`: a DatasetDict of image/mask pairs plus the label names.

`load_source(data_args)` picks the adapter from the arguments: `--dataset_name synthetic`, a Hub id or
local datasets folder (`hub.py`), or `--data_dir` with `--layout` (one module per layout).
"""

from __future__ import annotations

from hfseg.adapters.base import SourceData, split_train_validation
from hfseg.adapters.hub import load_hub_or_local_dataset
from hfseg.config import DataArguments
from hfseg.errors import HfsegError
from hfseg.labels import load_id2label
from hfseg.synthetic import SYNTHETIC_ID2LABEL, make_synthetic_dataset

__all__ = ["SourceData", "load_source"]


def load_source(data_args: DataArguments, seed: int = 0) -> SourceData:
    """Load the data the arguments name, with train and validation splits."""
    if data_args.data_dir and data_args.layout:
        from hfseg.adapters.layouts import load_layout

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
    if data_args.id2label_file:
        source.id2label = load_id2label(data_args.id2label_file)
    if source.id2label is None:
        raise HfsegError(
            f"no class names found for {data_args.dataset_name or data_args.data_dir}; "
            "pass --id2label_file with a JSON {id: name} of the final classes"
        )
    source.dataset = split_train_validation(source.dataset, data_args, seed)
    return source
