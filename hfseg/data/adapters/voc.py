"""Pascal VOC 2012 as downloaded: `JPEGImages/`, `SegmentationClass/` palette PNGs (255 = borders, ignored),
split lists in `ImageSets/Segmentation/`; `--voc_augmented` reads the SBD-augmented set instead
(`SegmentationClassAug/` PNGs and `train_aug.txt`, the usual "VOC aug" conversion).
"""

from __future__ import annotations

from pathlib import Path

from hfseg.data.adapters.base import Problem, SourceData, pairs_to_dataset
from hfseg.errors import HfsegError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def find_voc_root(data_dir: Path) -> Path:
    """The VOC2012 folder: `data_dir` itself, `data_dir/VOC2012` or `data_dir/VOCdevkit/VOC2012`."""
    for root in (data_dir, data_dir / "VOC2012", data_dir / "VOCdevkit" / "VOC2012"):
        if (root / "JPEGImages").is_dir():
            return root
    raise HfsegError(f"--data_dir {data_dir}: no VOC2012/JPEGImages folder found; point --data_dir at VOCdevkit")


def load_voc(data_dir: Path, data_args) -> SourceData:
    root = find_voc_root(data_dir)
    augmented = bool(getattr(data_args, "voc_augmented", False))
    mask_dir = root / ("SegmentationClassAug" if augmented else "SegmentationClass")
    lists = root / "ImageSets" / "Segmentation"
    split_files = {"train": "train_aug.txt" if augmented else "train.txt", "val": "val.txt"}
    if not mask_dir.is_dir():
        raise HfsegError(f"{mask_dir} not found; {'unset --voc_augmented' if augmented else 'is this VOC 2012?'}")
    pairs, problems = {}, []
    for split, name in split_files.items():
        if not (lists / name).is_file():
            if split == "train" and augmented:
                raise HfsegError(f"{lists / name} not found; --voc_augmented needs the train_aug.txt list")
            continue
        rows = []
        for number, line in enumerate((lists / name).read_text().splitlines(), start=1):
            stem = line.strip()
            if not stem:
                continue
            image, mask = root / "JPEGImages" / f"{stem}.jpg", mask_dir / f"{stem}.png"
            missing = [file for file in (image, mask) if not file.is_file()]
            if missing:
                problems += [
                    Problem("missing", str(file), f"listed in {lists / name}:{number} but not found", "restore it")
                    for file in missing
                ]
                continue
            rows.append((image, mask))
        pairs[split] = rows
    return SourceData(pairs_to_dataset(pairs), "image", "annotation", dict(enumerate(VOC_CLASSES)), problems=problems)
