"""Cityscapes as downloaded: `leftImg8bit/{train,val}/<city>/*_leftImg8bit.png` + `gtFine/.../*_gtFine_*.png`.

`--cityscapes_mask labelIds` (default) maps the 34 label ids to the 19 train ids (others -> ignore);
`labelTrainIds` reads the masks made by cityscapesScripts' createTrainIdLabelImgs as they are.
"""

from __future__ import annotations

from pathlib import Path

from hfseg.data.adapters.base import SourceData, pairs_to_dataset
from hfseg.data.adapters.folder import split_pairs
from hfseg.errors import HfsegError

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
#: label id -> train id, from cityscapesScripts' labels.py (ids not listed as a train class -> ignore).
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12}
LABEL_ID_TO_TRAIN_ID.update({26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18})
CITYSCAPES_MASKS = ("labelIds", "labelTrainIds")


def cityscapes_label_map(ignore_index: int = 255) -> dict[int, int]:
    """All 34 label ids (0..33) -> train id or `ignore_index`."""
    return {label_id: LABEL_ID_TO_TRAIN_ID.get(label_id, ignore_index) for label_id in range(34)}


def load_cityscapes(data_dir: Path, data_args) -> SourceData:
    mask_kind = getattr(data_args, "cityscapes_mask", "labelIds")
    if mask_kind not in CITYSCAPES_MASKS:
        raise HfsegError(f"--cityscapes_mask {mask_kind}: must be one of {', '.join(CITYSCAPES_MASKS)}")
    if not (data_dir / "leftImg8bit").is_dir() or not (data_dir / "gtFine").is_dir():
        raise HfsegError(f"--data_dir {data_dir}: expected the leftImg8bit/ and gtFine/ folders of Cityscapes")
    # The test split's gtFine masks are placeholders: only train and val are read.
    pairs, problems = split_pairs(
        data_dir / "leftImg8bit", data_dir / "gtFine", "_leftImg8bit", f"_gtFine_{mask_kind}", None, ("train", "val")
    )
    label_map = cityscapes_label_map(data_args.ignore_index) if mask_kind == "labelIds" else None
    id2label = dict(enumerate(CITYSCAPES_CLASSES))
    return SourceData(pairs_to_dataset(pairs), "image", "annotation", id2label, label_map=label_map, problems=problems)
