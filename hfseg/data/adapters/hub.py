"""Hub data sets by id and local `datasets` folders / parquet files.

Hub data sets that still ship a loading script (scene_parse_150 is one) no longer load by name with
datasets 5: their parquet export (`revision="refs/convert/parquet"`) is loaded instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from datasets import Dataset, DatasetDict, Image, IterableDataset, IterableDatasetDict, load_dataset, load_from_disk

from hfseg.data.adapters.ade20k_classes import ADE20K_CLASSES
from hfseg.data.adapters.base import SourceData, split_names
from hfseg.errors import HfsegError
from hfseg.hub.network import hub_offline, require_hub

logger = logging.getLogger(__name__)

PARQUET_REVISION = "refs/convert/parquet"
IMAGE_COLUMN_NAMES = ("image", "img", "pixel_values", "images", "input")
LABEL_COLUMN_NAMES = ("annotation", "label", "labels", "mask", "semantic_segmentation", "segmentation", "gt", "target")

#: Known Hub data sets: default config, class names, and the label convention of their masks.
KNOWN_DATASETS = {
    "scene_parse_150": {"config": "scene_parsing", "id2label": dict(enumerate(ADE20K_CLASSES)), "reduce_labels": True},
    "zhoubolei/scene_parse_150": {
        "config": "scene_parsing",
        "id2label": dict(enumerate(ADE20K_CLASSES)),
        "reduce_labels": True,
    },
}


def load_hub_or_local_dataset(data_args) -> SourceData:
    """`--dataset_name` as a Hub id, a `save_to_disk` folder, a folder of data files, or a parquet file."""
    name = data_args.dataset_name
    path = Path(name).expanduser()
    known = KNOWN_DATASETS.get(name, {})
    streaming = bool(getattr(data_args, "streaming", False))
    on_hub = False
    files_folder = None  # relative image paths in data files are read from the files' folder
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
        dataset = load_from_disk(str(path))
        if streaming:
            dataset = IterableDatasetDict({split: ds.to_iterable_dataset() for split, ds in dataset.items()})
    elif path.is_file() and path.suffix == ".parquet":
        dataset = load_dataset("parquet", data_files=str(path), streaming=streaming)
        files_folder = path.parent
    elif path.is_dir():
        dataset = load_dataset(str(path), streaming=streaming)
        files_folder = path
    else:
        require_hub("--dataset_name", name)
        on_hub = True
        try:
            dataset = _load_hub_dataset(name, data_args.dataset_config_name or known.get("config"), streaming)
        except (FileNotFoundError, ConnectionError) as error:  # DatasetNotFoundError is a FileNotFoundError
            where = "in the Hugging Face cache (HF_HUB_OFFLINE=1)" if hub_offline() else "on the Hub"
            raise HfsegError(
                f"--dataset_name {name}: no such local folder or file, and not found {where} ({error}); check the "
                "path or Hub id, or use --data_dir DIR --layout NAME for data in its own layout"
            ) from None
    if isinstance(dataset, Dataset):
        dataset = DatasetDict({"train": dataset})
    elif isinstance(dataset, IterableDataset):
        dataset = IterableDatasetDict({"train": dataset})
    if files_folder is not None and isinstance(dataset, DatasetDict):
        dataset = DatasetDict({split: resolve_relative_paths(ds, files_folder) for split, ds in dataset.items()})
    first = next(iter(dataset.values()))
    image_column, label_column = detect_columns(first, data_args.image_column, data_args.label_column, name)
    id2label = (
        known.get("id2label")
        or (_id2label_on_hub(name) if on_hub else _id2label_beside(path))
        or _id2label_from_features(first, label_column)
    )
    return SourceData(dataset, image_column, label_column, id2label, reduce_labels=known.get("reduce_labels"))


def resolve_relative_paths(dataset: Dataset, folder: Path) -> Dataset:
    """Image columns whose rows hold a relative path and no bytes (`{"path": "imgs/1.png", "bytes": None}`) read
    from `folder` (the data file's) where the file exists there; other rows stay as they are (a path that exists
    nowhere is reported by the data check, by name)."""

    def in_folder(path: str | None, has_bytes: bool) -> bool:
        return not has_bytes and bool(path) and not Path(path).is_absolute() and (folder / path).is_file()

    for column, feature in dataset.features.items():
        if not isinstance(feature, Image):
            continue
        chunks = dataset.data.column(column).chunks  # the Arrow table: no image bytes are copied
        rows = (zip(c.field("path").to_pylist(), c.field("bytes").is_valid().to_pylist(), strict=True) for c in chunks)
        if not any(in_folder(path, has_bytes) for chunk in rows for path, has_bytes in chunk):
            continue

        def absolute(batch, column=column):
            batch[column] = [
                {"path": str(folder / value["path"]), "bytes": None}
                if in_folder(value["path"], value["bytes"] is not None)
                else value
                for value in batch[column]
            ]
            return batch

        logger.info("relative paths in column '%s' are read from %s, where the files are", column, folder)
        undecoded = dataset.cast_column(column, Image(decode=False))
        dataset = undecoded.map(absolute, batched=True, desc="resolving relative paths").cast_column(column, feature)
    return dataset


def _load_hub_dataset(name: str, config: str | None, streaming: bool = False) -> DatasetDict | IterableDatasetDict:
    try:
        return load_dataset(name, config, streaming=streaming)
    except RuntimeError as error:
        if "scripts are no longer supported" not in str(error):
            raise
        logger.warning("%s ships a loading script; loading its parquet export (%s) instead", name, PARQUET_REVISION)
    try:
        return load_dataset(name, config, revision=PARQUET_REVISION, streaming=streaming)
    except ValueError as error:
        raise HfsegError(f"cannot load the parquet export of '{name}': {error}; set --dataset_config_name") from None


def detect_columns(dataset: Dataset, image_column: str | None, label_column: str | None, source: str):
    """Find the image and mask columns by feature type (Image), preferring the usual names."""
    features = dataset.features
    if features is None:  # a streamed data set that does not declare its features: look at one row
        row = next(iter(dataset))
        columns = list(row)
        image_features = [name for name, value in row.items() if hasattr(value, "getpixel")]
    else:
        columns = list(features)
        image_features = [name for name, feature in features.items() if isinstance(feature, Image)]
    for given, flag in ((image_column, "--image_column"), (label_column, "--label_column")):
        if given is not None and given not in columns:
            raise HfsegError(f"{source}: column '{given}' ({flag}) not found; columns are {columns}")
    if image_column is None:
        image_column = _pick(image_features, IMAGE_COLUMN_NAMES, exclude=label_column)
    if label_column is None:
        label_column = _pick(image_features, LABEL_COLUMN_NAMES, exclude=image_column, fallback_last=True)
    if image_column is None or label_column is None or image_column == label_column:
        raise HfsegError(
            f"{source}: cannot tell the image and mask columns apart (image columns: {image_features}, "
            f"all columns: {columns}); set --image_column and --label_column"
        )
    return image_column, label_column


def _pick(candidates: list[str], preferred: tuple[str, ...], exclude: str | None, fallback_last: bool = False):
    candidates = [name for name in candidates if name != exclude]
    for name in preferred:
        if name in candidates:
            return name
    if not candidates:
        return None
    return candidates[-1] if fallback_last else candidates[0]


def _id2label_beside(path: Path) -> dict[int, str] | None:
    file = path / "id2label.json" if path.is_dir() else path.with_name("id2label.json")
    if file.is_file():
        return {int(k): v for k, v in json.loads(file.read_text()).items()}
    return None


def _id2label_on_hub(name: str) -> dict[int, str] | None:
    """`id2label.json` at the root of a Hub data set repository, when it has one."""
    from huggingface_hub import hf_hub_download

    try:
        file = hf_hub_download(name, "id2label.json", repo_type="dataset")
    except Exception as error:  # absent file, gated repo, offline: the other sources of names are tried
        logger.debug("no id2label.json in %s: %s", name, error)
        return None
    return {int(k): v for k, v in json.loads(Path(file).read_text()).items()}


def _id2label_from_features(dataset: Dataset, label_column: str) -> dict[int, str] | None:
    """Class names stored in the dataset's metadata (an `id2label` JSON in the description), if any."""
    description = (dataset.info.description if dataset.info is not None else None) or ""
    try:
        data = json.loads(description)
    except json.JSONDecodeError:
        return None
    if isinstance(data, dict) and isinstance(data.get("id2label"), dict):
        return {int(k): v for k, v in data["id2label"].items()}
    return None


def split_streaming(dataset: IterableDatasetDict, data_args) -> IterableDatasetDict:
    """`train` and `validation` of a streamed source: named splits, or the first --max_eval_samples rows of
    the train stream held out; --max_train_samples / --max_eval_samples cap them with `take`."""
    train_split, validation_split = split_names(dataset, data_args)
    train = dataset[train_split]
    if validation_split is None:
        if not data_args.max_eval_samples:
            raise HfsegError(
                "--streaming: the source has no validation split; set --validation_split, or --max_eval_samples N "
                "to hold out the first N training rows"
            )
        validation = train.take(data_args.max_eval_samples)
        train = train.skip(data_args.max_eval_samples)
        logger.info(
            "validation: the first %d rows of streamed split '%s', held out (no validation split among %s); "
            "train: the rest",
            data_args.max_eval_samples,
            train_split,
            list(dataset),
        )
    else:
        logger.info("streaming: train from split '%s', validation from split '%s'", train_split, validation_split)
        validation = dataset[validation_split]
        if data_args.max_eval_samples:
            validation = validation.take(data_args.max_eval_samples)
    if data_args.max_train_samples:
        train = train.take(data_args.max_train_samples)
    return IterableDatasetDict({"train": train, "validation": validation})
