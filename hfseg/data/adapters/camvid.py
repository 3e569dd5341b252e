"""CamVid in fastai's layout: `images/<stem>.png` + `labels/<stem>_P.png` + `codes.txt` (one class per line),
optionally `valid.txt` (file names of the validation images).

Mask values index `codes.txt`; the `Void` class becomes the ignore index and the classes after it move down
by one, so the final ids have no gap.
"""

from __future__ import annotations

from pathlib import Path

from hfseg.data.adapters.base import SourceData, pairs_to_dataset
from hfseg.data.adapters.folder import pair_folders
from hfseg.errors import HfsegError

VOID_NAMES = ("void", "unlabelled", "unlabeled")


def camvid_labels(codes: list[str], ignore_index: int = 255) -> tuple[dict[int, str], dict[int, int]]:
    """codes.txt lines -> (id2label without Void, raw index -> final id or ignore_index)."""
    id2label, label_map = {}, {}
    for raw, name in enumerate(codes):
        if name.lower() in VOID_NAMES:
            label_map[raw] = ignore_index
        else:
            label_map[raw] = len(id2label)
            id2label[len(id2label)] = name
    return id2label, label_map


def load_camvid(data_dir: Path, data_args) -> SourceData:
    codes_file = data_dir / "codes.txt"
    if not codes_file.is_file() or not (data_dir / "images").is_dir() or not (data_dir / "labels").is_dir():
        raise HfsegError(f"--data_dir {data_dir}: CamVid needs images/, labels/ and codes.txt (fastai layout)")
    codes = [line.strip() for line in codes_file.read_text().splitlines() if line.strip()]
    found, problems = pair_folders(data_dir / "images", data_dir / "labels", "", "_P")
    valid_file = data_dir / "valid.txt"
    if valid_file.is_file():
        valid = {Path(line.strip()).stem for line in valid_file.read_text().splitlines() if line.strip()}
        pairs = {
            "train": [pair for key, pair in found.items() if Path(key).name not in valid],
            "validation": [pair for key, pair in found.items() if Path(key).name in valid],
        }
    else:
        pairs = {"train": list(found.values())}
    id2label, label_map = camvid_labels(codes, data_args.ignore_index)
    return SourceData(pairs_to_dataset(pairs), "image", "annotation", id2label, label_map=label_map, problems=problems)
