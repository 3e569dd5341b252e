"""`hfseg doctor`: scan a data source and report what training would trip on, before it does.

hfseg doctor --data_dir DIR --layout NAME [--plot class_pixels.png] | --dataset_name ID

Prints pairs per split, the image size range, pixels per class, and every problem (unreadable files,
image/mask size mismatches, label values outside id2label, colour-coded masks, unpaired files), each with
the file, what was found and the fix; exits 1 when there are problems. Training runs the same check
(`check_source`) before its first step.
"""

from __future__ import annotations

import argparse
import collections
import io
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, Image
from PIL import ExifTags, ImageOps, UnidentifiedImageError
from PIL import Image as PILImage
from tqdm.auto import tqdm

from hfseg.data.adapters import Problem, SourceData, build_label_spec, open_source
from hfseg.data.labels import LabelSpec, MaskError, check_same_size, decode_mask, load_rgb
from hfseg.errors import HfsegError, strip_debug, user_errors_exit

logger = logging.getLogger(__name__)

READ_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, PILImage.DecompressionBombError)
FIX_CORRUPT = "re-export or re-download the file, or remove the pair (--skip_bad_samples skips it)"


@dataclass
class ScanReport:
    """What a scan found. `bad_rows[split]` are the row indices with a problem."""

    pairs: dict[str, int] = field(default_factory=dict)
    scanned: dict[str, int] = field(default_factory=dict)
    sizes: collections.Counter = field(default_factory=collections.Counter)  # (W, H) -> images
    class_pixels: np.ndarray | None = None
    ignored_pixels: int = 0
    raw_values: set[int] = field(default_factory=set)
    problems: list[Problem] = field(default_factory=list)
    bad_rows: dict[str, set[int]] = field(default_factory=dict)

    def size_summary(self) -> str:
        """Real image sizes (W x H): the smallest and largest by area and the most common, with its count."""
        if not self.sizes:
            return "-"
        smallest, largest = (
            function(self.sizes, key=lambda size: (size[0] * size[1], size)) for function in (min, max)
        )
        common, count = self.sizes.most_common(1)[0]
        if len(self.sizes) == 1:
            return f"all {common[0]}x{common[1]} (W x H)"
        return (
            f"smallest {smallest[0]}x{smallest[1]}, largest {largest[0]}x{largest[1]}, most common "
            f"{common[0]}x{common[1]} ({count} of {self.sizes.total()}); {len(self.sizes)} distinct sizes (W x H)"
        )


def open_value(value, fallback: str) -> tuple[PILImage.Image, str]:
    """A row's image value (PIL image, path, or datasets' {path, bytes}) -> (loaded PIL image, its name)."""
    if isinstance(value, PILImage.Image):
        return value, getattr(value, "filename", "") or fallback
    path, data = (value, None) if isinstance(value, str) else (value.get("path"), value.get("bytes"))
    name = path or fallback
    image = PILImage.open(io.BytesIO(data) if data is not None else path)
    image.load()
    if image.getexif().get(ExifTags.Base.Orientation) is not None:  # as `datasets.Image` decodes it
        image = ImageOps.exif_transpose(image)
    return image, name


def inspect_pair(image_value, mask_value, spec: LabelSpec | None, row: str):
    """Decode one pair the way training does and collect what is wrong with it.

    Returns:
        (image size (W, H) or None, final labels (H, W) or None, raw mask values or None, problems).
    """
    problems = []
    loaded = {}
    for role, value in (("image", image_value), ("mask", mask_value)):
        try:
            loaded[role] = open_value(value, f"{row} ({role})")
        except READ_ERRORS as error:
            name = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
            problems.append(Problem("corrupt", name or f"{row} ({role})", f"cannot be read ({error})", FIX_CORRUPT))
    if problems:
        return None, None, None, problems
    (image, image_name), (mask, mask_name) = loaded["image"], loaded["mask"]
    try:
        rgb = load_rgb(image)
    except READ_ERRORS as error:
        return None, None, None, [Problem("corrupt", image_name, f"cannot be converted to RGB ({error})", FIX_CORRUPT)]
    size = (rgb.width, rgb.height)
    try:
        raw = spec.decode(mask, mask_name) if spec is not None else decode_mask(mask, mask_name)
    except MaskError as error:
        return size, None, None, [Problem.from_error(error)]
    try:
        check_same_size(raw.shape, size, mask_name, image_name)
    except MaskError as error:
        problems.append(Problem.from_error(error))
    if spec is None:
        return size, None, raw, problems
    try:
        labels = spec.map_values(raw, mask_name)
    except MaskError as error:
        return size, None, None, [*problems, Problem.from_error(error)]
    values = spec.invalid_values(labels)
    if values:
        raw_bad = sorted({int(v) for v in np.unique(raw[np.isin(labels, values)])})[:8]
        problems.append(Problem.from_error(spec.values_error(values, mask_name, raw_bad)))
    return size, labels, raw, problems


def undecoded(dataset: Dataset, columns: tuple[str, str]) -> Dataset:
    """The dataset with its Image columns left undecoded, so a broken file is reported by path."""
    for column in columns:
        if isinstance(dataset.features.get(column), Image):
            dataset = dataset.cast_column(column, Image(decode=False))
    return dataset


def scan_source(
    source: SourceData, spec: LabelSpec | None, max_samples: int = -1, progress: bool = True
) -> ScanReport:
    """Check every pair (or the first `max_samples` per split; -1 = all, 0 = pairing only)."""
    report = ScanReport(problems=list(source.problems))
    if spec is not None:
        report.class_pixels = np.zeros(spec.num_labels, dtype=np.int64)
    columns = (source.image_column, source.label_column)
    plan = {}
    for split, dataset in source.dataset.items():
        if not isinstance(dataset, Dataset):
            logger.info("split %s is streamed: not scanned", split)
            continue
        report.pairs[split] = len(dataset)
        plan[split] = len(dataset) if max_samples < 0 else min(len(dataset), max_samples)
    bar = tqdm(total=sum(plan.values()), desc="checking pairs", unit="pair", disable=not progress or not plan)
    for split, count in plan.items():
        dataset = undecoded(source.dataset[split], columns)
        report.scanned[split] = count
        for index in range(count):
            row = dataset[index]
            size, labels, raw, problems = inspect_pair(row[columns[0]], row[columns[1]], spec, f"{split} row {index}")
            bar.update(1)
            if size is not None:
                report.sizes[size] += 1
            if problems:
                report.problems += problems
                report.bad_rows.setdefault(split, set()).add(index)
                continue
            if labels is not None:
                keep = labels != spec.ignore_index
                report.class_pixels += np.bincount(labels[keep].ravel(), minlength=spec.num_labels)
                report.ignored_pixels += int((~keep).sum())
            elif raw is not None:
                report.raw_values.update(int(v) for v in np.unique(raw))
    bar.close()
    if spec is None:
        values = sorted(report.raw_values)
        report.problems.append(
            Problem(
                "no_id2label",
                "id2label",
                f"the source has no class names (mask values found: {values[:20]})",
                "pass --id2label_file with a JSON {id: name}, or put id2label.json in the data folder",
            )
        )
    return report


def format_report(report: ScanReport, spec: LabelSpec | None, title: str) -> str:
    lines = [f"hfseg doctor: {title}"]
    lines.append("pairs: " + ", ".join(f"{split} {count}" for split, count in report.pairs.items()))
    scanned = sum(report.scanned.values())
    lines.append(f"checked: {scanned} of {sum(report.pairs.values())} pairs")
    lines.append(f"image sizes: {report.size_summary()}")
    if spec is not None and report.class_pixels is not None:
        total = int(report.class_pixels.sum()) + report.ignored_pixels
        lines.append(f"pixels per class ({spec.num_labels} classes, after the label mapping):")
        rows = [(f"{index:>4}", name, int(report.class_pixels[index])) for index, name in spec.id2label.items()]
        for index, name, pixels in [*rows, ("", "(ignored)", report.ignored_pixels)]:
            lines.append(f"  {index:>4}  {name[:24]:<24} {pixels:>12}  {100 * pixels / max(total, 1):6.2f}%")
        absent = [name for index, name in spec.id2label.items() if report.class_pixels[index] == 0]
        if absent and scanned:
            lines.append(
                f"classes with no pixels: {len(absent)} ({', '.join(absent[:10])}{' ...' if len(absent) > 10 else ''})"
            )
    if report.problems:
        lines.append(f"problems: {len(report.problems)}")
        lines += [f"  [{problem.kind}] {problem}" for problem in report.problems]
    else:
        lines.append("problems: none")
    return "\n".join(lines)


def plot_class_pixels(report: ScanReport, spec: LabelSpec, path: str | Path) -> Path:
    """Bar chart of pixels per class (log scale) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(spec.id2label.values())
    width = max(6.0, 0.25 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(width, 4))
    axis.bar(range(len(names)), report.class_pixels, color="tab:blue")
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_ylabel("pixels")
    if report.class_pixels.max(initial=0) > 0:
        axis.set_yscale("log")
    axis.set_title(f"pixels per class ({sum(report.scanned.values())} pairs; ignored: {report.ignored_pixels})")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def check_source(source: SourceData, spec: LabelSpec, data_args) -> None:
    """The check training runs before its first step: stop on problems, or drop the broken pairs when
    `--skip_bad_samples` is set (and say how many and which)."""
    if getattr(data_args, "streaming", False):
        logger.info("data check skipped: the source is streamed (run `hfseg doctor` on a local copy to check it)")
        return
    report = scan_source(source, spec, data_args.check_samples)
    if not report.problems:
        logger.info("data check: %s pairs checked, no problems", sum(report.scanned.values()))
        return
    listing = "\n".join(f"  - {problem}" for problem in report.problems[:20])
    more = f"\n  ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
    if not data_args.skip_bad_samples:
        raise HfsegError(
            f"the data check found {len(report.problems)} problem(s) before training:\n{listing}{more}\n"
            "fix them (`hfseg doctor` with the same data flags prints the full report), or pass "
            "--skip_bad_samples to train without these pairs"
        )
    for split, rows in report.bad_rows.items():
        dataset = source.dataset[split]
        source.dataset[split] = dataset.select([index for index in range(len(dataset)) if index not in rows])
    skipped = sum(len(rows) for rows in report.bad_rows.values())
    logger.warning(
        "--skip_bad_samples: skipping %d pair(s) (%d problem(s)):\n%s%s", skipped, len(report.problems), listing, more
    )
    if any(len(dataset) == 0 for dataset in source.dataset.values()):
        raise HfsegError("every pair of a split was skipped as broken; fix the data (see `hfseg doctor`)")


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    """Exit status: 0 no problems, 1 problems found, 2 the data could not be opened at all."""
    from hfseg.config import parse_data_args

    argv = strip_debug(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="hfseg doctor", add_help=False)
    parser.add_argument(
        "--plot", nargs="?", const="class_pixels.png", default=None, help="Write a class-pixel bar chart PNG."
    )
    parser.add_argument("--max_samples", type=int, default=-1, help="Pairs per split to decode (-1 = all).")
    parser.add_argument("--no_progress", action="store_true", help="No progress bar.")
    if any(arg in ("-h", "--help") for arg in argv):
        parser.print_help()
        print("\nand the data flags of `hfseg finetune` (--dataset_name, --data_dir, --layout, --label_map, ...)")
        sys.exit(0)
    own, rest = parser.parse_known_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    data_args = parse_data_args(rest)
    source = open_source(data_args)
    spec = build_label_spec(source, data_args) if source.id2label is not None else None
    report = scan_source(source, spec, own.max_samples, progress=not own.no_progress)
    title = data_args.dataset_name or f"{data_args.data_dir} (--layout {data_args.layout})"
    print(format_report(report, spec, title))
    if own.plot and spec is not None:
        print(f"class-pixel chart: {plot_class_pixels(report, spec, own.plot)}")
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
