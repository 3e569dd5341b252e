"""ADE20K SceneParsing as downloaded (`ADEChallengeData2016/{images,annotations}/{training,validation}`).

Masks: 0 = other (ignored), 1..150 = classes, so the source's convention is reduce-labels.
"""

from __future__ import annotations

from pathlib import Path

from hfseg.data.adapters.ade20k_classes import ADE20K_CLASSES
from hfseg.data.adapters.base import SourceData, pairs_to_dataset
from hfseg.data.adapters.folder import split_pairs
from hfseg.errors import HfsegError


def load_ade20k(data_dir: Path, data_args) -> SourceData:
    root = data_dir / "ADEChallengeData2016" if (data_dir / "ADEChallengeData2016").is_dir() else data_dir
    if not (root / "images").is_dir() or not (root / "annotations").is_dir():
        raise HfsegError(
            f"--data_dir {data_dir}: no ADEChallengeData2016/images and annotations folders; point --data_dir at "
            "the folder that holds ADEChallengeData2016 (or use --layout folder)"
        )
    pairs, problems = split_pairs(root / "images", root / "annotations", "", "")
    id2label = dict(enumerate(ADE20K_CLASSES))
    return SourceData(pairs_to_dataset(pairs), "image", "annotation", id2label, reduce_labels=True, problems=problems)
