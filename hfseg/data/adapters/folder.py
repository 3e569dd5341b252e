"""Paired folders: `images/` + `masks/` matched by file stem (suffixes like `_gt` or `_P` stripped), split
folders (`images/train` + `masks/train`, `train_images` + `train_segmentations`, `train/image` + `train/label`) or
split files, or a CSV/JSON list of pairs. The other native layouts build on `pair_folders`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hfseg.data.adapters.base import Problem, SourceData, pairs_to_dataset
from hfseg.data.labels import load_id2label
from hfseg.errors import HfsegError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif")
IMAGE_DIR_NAMES = ("images", "imgs", "img_dir", "image", "img", "JPEGImages", "leftImg8bit", "rgb")
MASK_DIR_NAMES = ("masks", "labels", "ann_dir", "annotations", "gts", "gt", "mask", "label", "SegmentationClass")
MASK_DIR_NAMES += ("segmentations", "segmentation")
#: Suffixes tried, in order of preference, when --image_suffix/--mask_suffix are not given.
IMAGE_SUFFIXES = ("", "_img", "_image", "_leftImg8bit", "_sat", "_rgb", "_RGB")
MASK_SUFFIXES = ("", "_P", "_gt", "_mask", "_label", "_labels", "_seg", "_L", "_lbl", "_gtFine_labelTrainIds")
#: Split folder names -> split names (ADE20K's `training` is hfseg's `train`).
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "valid", "validation": "validation"}
SPLIT_FOLDERS.update({"test": "test", "trainval": "trainval"})
SPLIT_DIR_NAMES = ("splits", "split", "ImageSets/Segmentation")


def list_files(folder: Path, extensions: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(relative path without extension, path) of the files under `folder`, recursively, sorted."""
    return [
        (path.relative_to(folder).with_suffix("").as_posix(), path)
        for path in sorted(folder.rglob("*"))
        if not path.name.startswith(".") and path.suffix.lower() in extensions and path.is_file()
    ]


def by_key(files: list[tuple[str, Path]], suffix: str) -> dict[str, Path]:
    """The files whose stem ends with `suffix`, keyed by relative path without it."""
    keyed: dict[str, Path] = {}
    for relative, path in files:
        if relative.endswith(suffix):
            keyed.setdefault(relative[: len(relative) - len(suffix)] if suffix else relative, path)
    return keyed


def pair_folders(
    image_dir: Path, mask_dir: Path, image_suffix: str | None = None, mask_suffix: str | None = None
) -> tuple[dict[str, tuple[Path, Path]], list[Problem]]:
    """Match images and masks by relative path and stem; report the files left without a partner.

    Without explicit suffixes, the pair of `IMAGE_SUFFIXES` x `MASK_SUFFIXES` that matches most files wins.

    Returns:
        `{key: (image, mask)}` sorted by key, and one `Problem` per image without mask / mask without image.
    """
    image_files = list_files(image_dir, IMAGE_EXTENSIONS)
    mask_files = list_files(mask_dir, MASK_EXTENSIONS)
    best = None
    for image_end in IMAGE_SUFFIXES if image_suffix is None else (image_suffix,):
        images = by_key(image_files, image_end)
        for mask_end in MASK_SUFFIXES if mask_suffix is None else (mask_suffix,):
            masks = by_key(mask_files, mask_end)
            # Images and masks may share one folder: a file taken as a mask is not also an image.
            mask_paths = set(masks.values())
            usable = {key: path for key, path in images.items() if path not in mask_paths}
            count = len(usable.keys() & masks.keys())
            if best is None or count > best[0]:
                best = (count, usable, masks, image_end, mask_end)
    _, images, masks, image_end, mask_end = best
    pairs = {key: (images[key], masks[key]) for key in sorted(images.keys() & masks.keys())}
    problems = [
        Problem(
            "unpaired",
            str(images[key]),
            f"image has no mask (looked for {mask_dir / key}{mask_end}.png)",
            "add its mask or remove the image; or set --mask_dir / --mask_suffix",
        )
        for key in sorted(images.keys() - masks.keys())
    ]
    problems += [
        Problem(
            "unpaired",
            str(masks[key]),
            f"mask has no image (looked for {image_dir / key}{image_end}.*)",
            "add its image or remove the mask; or set --image_dir / --image_suffix",
        )
        for key in sorted(masks.keys() - images.keys())
    ]
    return pairs, problems


def find_dir(root: Path, given: str | None, names: tuple[str, ...], what: str, flag: str) -> Path:
    """`root/given`, or the first of `names` that exists under `root`."""
    if given:
        path = Path(given) if Path(given).is_absolute() else root / given
        if not path.is_dir():
            raise HfsegError(f"{flag} {given}: {path} is not a folder")
        return path
    for name in names:
        if (root / name).is_dir():
            return root / name
    pairs_hint = " (or list the pairs in --pairs_file, a CSV image,mask[,split])" if flag != "--split_dir" else ""
    raise HfsegError(
        f"{root}: no {what} folder found (looked for {', '.join(names)}); set {flag} to the folder of {what}"
        + pairs_hint
    )


def split_layout_dirs(root: Path) -> dict[str, tuple[Path, Path]]:
    """`{split: (image folder, mask folder)}` of split-first layouts, or {} when `root` has none.

    `train_images/` + `train_segmentations/` (LIP: SPLIT_IMAGENAME + SPLIT_MASKNAME) or `train/image/` +
    `train/label/` (a split folder holding one image and one mask folder).
    """
    found = {}
    for folder, split in SPLIT_FOLDERS.items():
        for parent, pattern in ((root, f"{folder}_{{}}"), (root / folder, "{}")):
            image_dir, mask_dir = (
                next((parent / pattern.format(n) for n in names if (parent / pattern.format(n)).is_dir()), None)
                for names in (IMAGE_DIR_NAMES, MASK_DIR_NAMES)
            )
            if image_dir and mask_dir:
                found[split] = (image_dir, mask_dir)
                break
    return found


def pair_split_folders(
    folders: dict[str, tuple[Path, Path]], image_suffix: str | None = None, mask_suffix: str | None = None
) -> tuple[dict[str, list[tuple[Path, Path]]], list[Problem]]:
    """`{split: (image folder, mask folder)}` -> pairs per split and the unpaired files of all splits."""
    pairs, problems = {}, []
    for split, (image_dir, mask_dir) in folders.items():
        found, missing = pair_folders(image_dir, mask_dir, image_suffix, mask_suffix)
        pairs[split] = list(found.values())
        problems += missing
    return pairs, problems


def split_pairs(
    image_dir: Path,
    mask_dir: Path,
    image_suffix: str | None = None,
    mask_suffix: str | None = None,
    split_dir: Path | None = None,
    split_names: tuple[str, ...] = tuple(SPLIT_FOLDERS),
) -> tuple[dict[str, list[tuple[Path, Path]]], list[Problem]]:
    """Pairs per split: from split folders (`images/train`, `masks/train`), from split files
    (`splits/train.txt` listing keys), or all in `train` (hfseg then holds out a validation part)."""
    split_folders = [
        child.name
        for child in sorted(image_dir.iterdir())
        if child.is_dir() and child.name in split_names and (mask_dir / child.name).is_dir()
    ]
    if split_folders:
        folders = {SPLIT_FOLDERS[folder]: (image_dir / folder, mask_dir / folder) for folder in split_folders}
        return pair_split_folders(folders, image_suffix, mask_suffix)
    found, problems = pair_folders(image_dir, mask_dir, image_suffix, mask_suffix)
    if split_dir is not None:
        return pairs_from_split_files(found, split_dir, problems)
    return {"train": list(found.values())}, problems


def pairs_from_split_files(
    found: dict[str, tuple[Path, Path]], split_dir: Path, problems: list[Problem]
) -> tuple[dict[str, list[tuple[Path, Path]]], list[Problem]]:
    """Split files `NAME.txt` list one key per line (a stem, a relative path, with or without extension)."""
    by_name = {Path(key).name: key for key in found}
    pairs = {}
    files = sorted(split_dir.glob("*.txt"))
    if not files:
        raise HfsegError(f"--split_dir {split_dir}: no NAME.txt split files in it")
    for file in files:
        rows = []
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            name = Path(line.split()[0]).with_suffix("").as_posix() if "." in line.split()[0] else line.split()[0]
            key = name if name in found else by_name.get(Path(name).name)
            if key is None:
                problems.append(
                    Problem(
                        "missing",
                        f"{file}:{number}",
                        f"'{name}' is listed but has no image/mask pair",
                        "add the pair or remove the line",
                    )
                )
                continue
            rows.append(found[key])
        pairs[SPLIT_FOLDERS.get(file.stem, file.stem)] = rows
    return pairs, problems


def read_pairs_file(path: Path) -> dict[str, list[tuple[Path, Path]]]:
    """A CSV (`image,mask[,split]` header) or JSON (`[{"image", "mask", "split"?}]` or `{split: [[image, mask]]}`)
    list of pairs; relative paths are relative to the file's folder."""
    root = path.parent
    rows: list[tuple[str, str, str]] = []
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                rows = [(split, image, mask) for split, items in data.items() for image, mask in items]
            else:
                rows = [(item.get("split", "train"), item["image"], item["mask"]) for item in data]
        else:
            with path.open(newline="") as handle:
                rows = [(row.get("split") or "train", row["image"], row["mask"]) for row in csv.DictReader(handle)]
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise HfsegError(
            f"--pairs_file {path}: cannot read it ({error!r}); use a CSV with an 'image,mask[,split]' header or "
            'JSON [{"image": ..., "mask": ..., "split": ...}]'
        ) from None
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    for split, image, mask in rows:
        pairs.setdefault(split, []).append((root / image, root / mask))
    return pairs


def missing_files(pairs: dict[str, list[tuple[Path, Path]]], listed_in: Path) -> list[Problem]:
    """Pairs from a list whose image or mask does not exist."""
    return [
        Problem("missing", str(file), f"listed in {listed_in} but not found", "fix the path or remove the row")
        for rows in pairs.values()
        for pair in rows
        for file in pair
        if not file.is_file()
    ]


def id2label_in(data_dir: Path) -> dict[int, str] | None:
    """Class names from `id2label.json` in the data folder, if there is one."""
    file = data_dir / "id2label.json"
    return load_id2label(file) if file.is_file() else None


def load_folder(data_dir: Path, data_args) -> SourceData:
    """`--layout folder`: images and masks paired by stem (see the module docstring)."""
    split_dirs = {} if data_args.image_dir or data_args.mask_dir else split_layout_dirs(data_dir)
    if data_args.pairs_file:
        pairs_file = Path(data_args.pairs_file)
        if not pairs_file.is_file() and not pairs_file.is_absolute():  # the current folder first, then data_dir
            pairs_file = data_dir / pairs_file
        if not pairs_file.is_file():
            raise HfsegError(
                f"--pairs_file {data_args.pairs_file}: no such file in the current folder nor in {data_dir}"
            )
        pairs = read_pairs_file(pairs_file)
        problems = missing_files(pairs, pairs_file)
        pairs = {split: [p for p in rows if p[0].is_file() and p[1].is_file()] for split, rows in pairs.items()}
    elif split_dirs and not any((data_dir / name).is_dir() for name in IMAGE_DIR_NAMES):
        pairs, problems = pair_split_folders(split_dirs, data_args.image_suffix, data_args.mask_suffix)
    else:
        image_dir = find_dir(data_dir, data_args.image_dir, IMAGE_DIR_NAMES, "images", "--image_dir")
        mask_dir = find_dir(data_dir, data_args.mask_dir, MASK_DIR_NAMES, "masks", "--mask_dir")
        split_dir = None
        if data_args.split_dir:
            split_dir = find_dir(data_dir, data_args.split_dir, (), "split files", "--split_dir")
        else:
            split_dir = next((data_dir / name for name in SPLIT_DIR_NAMES if (data_dir / name).is_dir()), None)
        pairs, problems = split_pairs(image_dir, mask_dir, data_args.image_suffix, data_args.mask_suffix, split_dir)
    if not any(pairs.values()):
        raise HfsegError(
            f"{data_dir}: no image/mask pairs found; check --image_dir, --mask_dir and the suffixes "
            "(--image_suffix, --mask_suffix), or list the pairs in --pairs_file"
        )
    return SourceData(pairs_to_dataset(pairs), "image", "annotation", id2label_in(data_dir), problems=problems)


def load_colormask(data_dir: Path, data_args) -> SourceData:
    """`--layout colormask`: paired folders whose masks are colour-coded RGB, decoded with --palette_file."""
    if not data_args.palette_file:
        raise HfsegError(
            "--layout colormask needs --palette_file (JSON {id: [R, G, B]} or 'R G B name' lines) to turn the "
            "mask colours into class ids"
        )
    return load_folder(data_dir, data_args)
