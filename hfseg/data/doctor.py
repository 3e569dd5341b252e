"""`hfseg doctor`: scan a data source and report what training would trip on, before it does.

hfseg doctor --data_dir DIR --layout NAME [--plot class_pixels.png] [--stats] | --dataset_name ID

Prints pairs per split, the image size range, pixels per class, and every problem (unreadable files,
image/mask size mismatches, label values outside id2label, colour-coded masks, unpaired files), each with
the file, what was found and the fix; exits 1 when there are problems. Training runs the same check
(`check_source`) before its first step. `--stats` adds the train split's per-band image mean/std as recipe lines.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset
from tqdm.auto import tqdm

from hfseg.data.adapters import Problem, SourceData, build_label_spec, open_source
from hfseg.data.adapters.base import undecoded
from hfseg.data.bands import band_statistics, recipe_lines
from hfseg.data.checks import inspect_pair
from hfseg.data.labels import LabelSpec
from hfseg.errors import HfsegError, require_writable_dir, strip_debug, user_errors_exit

logger = logging.getLogger(__name__)

#: Ignore share of a split above which a named class with no pixels means a class value is read as ignore.
#: Real data sets stay below it: VOC borders ~5-10%, ADE20K "other" ~10%, Cityscapes ~10-15%.
IGNORE_SHARE_WITH_EMPTY_CLASS = 0.25
#: Ignore share of a split that cannot be right even when every class has pixels.
IGNORE_SHARE_MAX = 0.6
#: Problems of a whole split's labels: no pair is to blame, so --skip_bad_samples cannot drop them.
SPLIT_LABEL_PROBLEMS = ("no_labelled_pixels", "ignore_share")


@dataclass
class ScanReport:
    """What a scan found. `bad_rows[split]` are the row indices with a problem."""

    pairs: dict[str, int] = field(default_factory=dict)
    scanned: dict[str, int] = field(default_factory=dict)
    sizes: collections.Counter = field(default_factory=collections.Counter)  # (W, H) -> images
    class_pixels: np.ndarray | None = None
    ignored_pixels: int = 0
    raw_values: set[int] = field(default_factory=set)
    split_class_pixels: dict[str, np.ndarray] = field(default_factory=dict)
    split_ignored_raw: dict[str, dict[int, int]] = field(default_factory=dict)
    split_raw_values: dict[str, set[int]] = field(default_factory=dict)
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


def scan_source(
    source: SourceData,
    spec: LabelSpec | None,
    max_samples: int = -1,
    progress: bool = True,
    allow_high_ignore: bool = False,
) -> ScanReport:
    """Check every pair (or the first `max_samples` per split; -1 = all, 0 = pairing only), then each
    split's labels as a whole (`ignore_problems`; `allow_high_ignore` keeps only the no-labelled-pixel one)."""
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
                pixels = np.bincount(labels[keep].ravel(), minlength=spec.num_labels)
                report.class_pixels += pixels
                report.ignored_pixels += int((~keep).sum())
                split_pixels = report.split_class_pixels.setdefault(split, np.zeros_like(pixels))
                split_pixels += pixels
                ignored_raw = report.split_ignored_raw.setdefault(split, {})
                for value, count in zip(*np.unique(raw[~keep], return_counts=True), strict=True):
                    ignored_raw[int(value)] = ignored_raw.get(int(value), 0) + int(count)
                report.split_raw_values.setdefault(split, set()).update(int(v) for v in np.unique(raw))
            elif raw is not None:
                report.raw_values.update(int(v) for v in np.unique(raw))
    bar.close()
    if spec is not None:
        for split, pixels in report.split_class_pixels.items():
            report.problems += ignore_problems(
                split, pixels, report.split_ignored_raw[split], report.split_raw_values[split], spec, allow_high_ignore
            )
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


def ignore_problems(
    split: str,
    class_pixels: np.ndarray,
    ignored_raw: dict[int, int],
    raw_values: set[int],
    spec: LabelSpec,
    allow_high_ignore: bool = False,
) -> list[Problem]:
    """What a split's pixel counts say about its labels as a whole.

    A split without a labelled pixel is a problem (it trains on nothing and scores NaN). So is a split whose
    ignore share is above `IGNORE_SHARE_WITH_EMPTY_CLASS` (25%) while a named class has no pixels, or above
    `IGNORE_SHARE_MAX` (60%) at all: a class value is then most likely read as the ignore index (EM masks with
    255 = cell, say). The fix is a `--label_map` computed from the values found; `allow_high_ignore` accepts
    a high share (the no-labelled-pixel problem stays).

    Args:
        class_pixels: (num_labels,) labelled pixels per class in the split.
        ignored_raw: raw mask value -> pixels of that value that ended as the ignore index.
        raw_values: every raw mask value seen in the split.
    """
    labelled, ignored = int(class_pixels.sum()), sum(ignored_raw.values())
    if labelled + ignored == 0:
        return []
    share = ignored / (labelled + ignored)
    empty = [index for index in spec.id2label if class_pixels[index] == 0]
    ignored_values = sorted(ignored_raw, key=lambda value: (-ignored_raw[value], value))
    found_values = f"raw value(s) {ignored_values[:8]}"
    if labelled == 0:
        found = f"no labelled pixel: every checked mask pixel is ignore_index={spec.ignore_index} ({found_values})"
        if raw_values <= {spec.ignore_index}:  # nothing to remap: the masks themselves hold no labels
            fix = "re-export these masks with their labels, or train and evaluate on splits that have them"
        else:
            fix = suggest_label_map(spec, raw_values, empty)
        return [Problem("no_labelled_pixels", f"{split} split", found, fix)]
    if allow_high_ignore or not (share > IGNORE_SHARE_MAX or (empty and share > IGNORE_SHARE_WITH_EMPTY_CLASS)):
        return []
    names = ", ".join(f"'{spec.id2label[index]}' ({index})" for index in empty[:5])
    found = (
        f"{100 * share:.1f}% of the pixels are ignore_index={spec.ignore_index} ({found_values})"
        + (f" while class(es) {names} have no pixels" if empty else "")
        + f" (limits: {100 * IGNORE_SHARE_WITH_EMPTY_CLASS:.0f}% with a class without pixels, "
        f"{100 * IGNORE_SHARE_MAX:.0f}% in any case)"
    )
    fix = suggest_label_map(spec, raw_values, empty) + " (or pass --allow_high_ignore if they really are ignore)"
    return [Problem("ignore_share", f"{split} split", found, fix)]


def suggest_label_map(spec: LabelSpec, raw_values: set[int], empty: list[int]) -> str:
    """The `--label_map` that gives the raw values now read as ignore to the classes without pixels, both in
    increasing order; every other raw value seen keeps its current label. Under reduce-labels, when the raw
    values already fit id2label, the fix is to turn reduce-labels off instead."""
    if spec.reduce_labels and 0 in raw_values and max(raw_values - {spec.ignore_index}, default=0) < spec.num_labels:
        return (
            "mask value 0 looks like a class, not 'other' (the values fit id2label as they are): --reduce_labels false"
        )
    table = spec.lookup_table(max(max(raw_values, default=0), 255))
    ignored = [value for value in sorted(raw_values) if table[value] == spec.ignore_index]
    if not ignored or not empty:
        return (
            "if those values are classes, add them to id2label and map them with --label_map {raw: final id}; "
            "if the masks really have no labels, fix or remove them"
        )
    mapping = {value: int(table[value]) for value in sorted(raw_values)}
    mapping.update(zip(ignored, empty, strict=False))
    shown = ", ".join(f'"{value}": {final}' for value, final in sorted(mapping.items()))
    return f"mask values {ignored[: len(empty)]} look like classes, not ignore: set --label_map '{{{shown}}}'"


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


def format_band_statistics(source: SourceData, split: str, progress: bool = True) -> str:
    """Per-band mean/std of the images of `split` (streamed, one image at a time) as recipe lines."""
    if split not in source.dataset:
        raise HfsegError(f"--stats: no split '{split}' (splits: {list(source.dataset)}); set --train_split")
    dataset = undecoded(source.dataset[split], (source.image_column,))
    total = len(dataset) if isinstance(dataset, Dataset) else None
    images = (row[source.image_column] for row in dataset)
    mean, std = band_statistics(images, total, progress)
    return (
        f"\nper-band image statistics of the {split} split ({total or 'all'} images; [0, 1] units: 8-bit / 255, "
        f"16-bit / 65535, float as stored), for a recipe or as --image_mean/--image_std/--num_channels:\n"
        + recipe_lines(mean, std)
    )


def check_source(source: SourceData, spec: LabelSpec, data_args) -> None:
    """The check training runs before its first step: stop on problems, or drop the broken pairs when
    `--skip_bad_samples` is set (and say how many and which)."""
    if getattr(data_args, "streaming", False):
        logger.info("data check skipped: the source is streamed (run `hfseg doctor` on a local copy to check it)")
        return
    report = scan_source(source, spec, data_args.check_samples, allow_high_ignore=data_args.allow_high_ignore)
    if not report.problems:
        logger.info("data check: %s pairs checked, no problems", sum(report.scanned.values()))
        return
    listing = "\n".join(f"  - {problem}" for problem in report.problems[:20])
    more = f"\n  ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
    split_problems = [problem for problem in report.problems if problem.kind in SPLIT_LABEL_PROBLEMS]
    if split_problems:  # no pair to skip: the labels of a whole split are wrong
        raise HfsegError(
            "the data check found label problems before training:\n"
            + "\n".join(f"  - {problem}" for problem in split_problems)
            + "\n(`hfseg doctor` with the same data flags prints pixels per class)"
        )
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
    parser.add_argument(
        "--stats",
        action="store_true",
        help="Also compute per-band image mean/std over the train split (any bit depth, in [0, 1] units: 8-bit / "
        "255, 16-bit / 65535, float as stored) and print them as recipe lines (image_mean, image_std, num_channels).",
    )
    if any(arg in ("-h", "--help") for arg in argv):
        parser.print_help()
        print("\nand the data flags of `hfseg finetune` (--dataset_name, --data_dir, --layout, --label_map, ...)")
        sys.exit(0)
    own, rest = parser.parse_known_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    data_args = parse_data_args(rest)
    if own.plot:  # before the scan, which can take minutes
        require_writable_dir(Path(own.plot).parent, "--plot")
    source = open_source(data_args)
    spec = build_label_spec(source, data_args) if source.id2label is not None else None
    report = scan_source(
        source, spec, own.max_samples, progress=not own.no_progress, allow_high_ignore=data_args.allow_high_ignore
    )
    title = data_args.dataset_name or f"{data_args.data_dir} (--layout {data_args.layout})"
    print(format_report(report, spec, title))
    if own.plot and spec is not None:
        print(f"class-pixel chart: {plot_class_pixels(report, spec, own.plot)}")
    if own.stats:
        print(format_band_statistics(source, data_args.train_split, progress=not own.no_progress))
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
