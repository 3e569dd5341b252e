"""Oxford-IIIT Pets as downloaded: `images/*.jpg` + `annotations/trimaps/*.png`, splits from
`annotations/trainval.txt` and `annotations/test.txt`.

Trimap values: 1 = pet, 2 = background, 3 = border; `--trimap_mapping` chooses what they become.
"""

from __future__ import annotations

from pathlib import Path

from hfseg.data.adapters.base import Problem, SourceData, pairs_to_dataset
from hfseg.data.adapters.folder import pair_folders
from hfseg.errors import HfsegError

#: mapping name -> (id2label, trimap value -> final id); "ignore" is replaced by the ignore index.
TRIMAP_MAPPINGS = {
    "binary": ({0: "background", 1: "pet"}, {1: 1, 2: 0, 3: "ignore"}),
    "border_as_pet": ({0: "background", 1: "pet"}, {1: 1, 2: 0, 3: 1}),
    "three_class": ({0: "background", 1: "pet", 2: "border"}, {1: 1, 2: 0, 3: 2}),
}


def trimap_labels(mapping: str, ignore_index: int = 255) -> tuple[dict[int, str], dict[int, int]]:
    if mapping not in TRIMAP_MAPPINGS:
        raise HfsegError(f"--trimap_mapping {mapping}: must be one of {', '.join(TRIMAP_MAPPINGS)}")
    id2label, table = TRIMAP_MAPPINGS[mapping]
    return dict(id2label), {raw: ignore_index if final == "ignore" else final for raw, final in table.items()}


def load_pets(data_dir: Path, data_args) -> SourceData:
    image_dir, trimap_dir = data_dir / "images", data_dir / "annotations" / "trimaps"
    if not image_dir.is_dir() or not trimap_dir.is_dir():
        raise HfsegError(f"--data_dir {data_dir}: Oxford-IIIT Pets needs images/ and annotations/trimaps/")
    found, problems = pair_folders(image_dir, trimap_dir, "", "")
    pairs = {}
    for split, name in (("train", "trainval.txt"), ("test", "test.txt")):
        list_file = data_dir / "annotations" / name
        if not list_file.is_file():
            continue
        rows = []
        for number, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            stem = line.split()[0]
            if stem not in found:
                problems.append(
                    Problem("missing", f"{list_file}:{number}", f"'{stem}' has no image/trimap pair", "restore it")
                )
                continue
            rows.append(found[stem])
        pairs[split] = rows
    if not pairs:
        pairs = {"train": list(found.values())}
    id2label, label_map = trimap_labels(getattr(data_args, "trimap_mapping", "binary"), data_args.ignore_index)
    return SourceData(pairs_to_dataset(pairs), "image", "annotation", id2label, label_map=label_map, problems=problems)
