"""Pictures people look at: colour palettes, mask overlays and image | truth | prediction grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_COLOUR = (0, 0, 0)


def make_palette(num_labels: int) -> np.ndarray:
    """(num_labels, 3) uint8 distinct colours (the Pascal VOC bit-interleaving scheme), deterministic."""
    palette = np.zeros((num_labels, 3), dtype=np.uint8)
    for index in range(num_labels):
        value, colour = index + 1 if num_labels > 1 else index, [0, 0, 0]
        for shift in range(8):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << (7 - shift)
            value >>= 3
        palette[index] = colour
    return palette


def colourise(mask: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ignored pixels black."""
    mask = np.asarray(mask)
    valid = (mask >= 0) & (mask < len(palette))
    colours = np.zeros((*mask.shape, 3), dtype=np.uint8)
    colours[valid] = palette[mask[valid]]
    return colours


def picture(image) -> Image.Image:
    """A PIL image as it is; (C, H, W) bands (`hfseg.data.bands.read_bands`) as an 8-bit RGB preview."""
    if isinstance(image, Image.Image):
        return image
    from hfseg.data.bands import preview_rgb

    return preview_rgb(image)


def overlay(image, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend the colourised mask over the image (PIL, or (C, H, W) bands; ignored pixels keep the image)."""
    base = np.asarray(picture(image).convert("RGB"), dtype=np.float32)
    colours = colourise(mask, palette).astype(np.float32)
    valid = ((np.asarray(mask) >= 0) & (np.asarray(mask) < len(palette)))[..., None]
    blended = np.where(valid, (1 - alpha) * base + alpha * colours, base)
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def save_prediction_grid(
    rows, id2label: dict[int, str], path: str | Path, title: str | None = None, row_titles: list[str] | None = None
) -> Path:
    """Rows of (image (PIL or (C, H, W) bands), truth (H, W), prediction (H, W)) -> PNG grid: image | truth |
    prediction, masks in solid class colours (ignored pixels black) with a legend of the classes that appear;
    `row_titles` (one per row) label each row's image panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    palette = make_palette(len(id2label))
    rows = list(rows)
    figure, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    present = set()
    for row_index, (row, (image, truth, prediction)) in enumerate(zip(axes, rows, strict=True)):
        present |= {int(v) for v in np.unique(truth) if 0 <= v < len(palette)}
        present |= {int(v) for v in np.unique(prediction) if 0 <= v < len(palette)}
        panels = (picture(image), colourise(truth, palette), colourise(prediction, palette))
        names = ("image" if row_titles is None else row_titles[row_index], "ground truth", "prediction")
        for axis, panel, name in zip(row, panels, names, strict=True):
            axis.imshow(panel)
            axis.set_title(name, fontsize=9)
            axis.axis("off")
    handles = [Patch(color=palette[i] / 255, label=id2label.get(i, str(i))) for i in sorted(present)]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 0.97))
    path = Path(path)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def save_training_curves(log_history: list[dict], path: str | Path) -> Path | None:
    """Training loss and validation mIoU against steps, from `trainer.state.log_history`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    mious = [(entry["step"], entry["eval_mean_iou"]) for entry in log_history if "eval_mean_iou" in entry]
    if not losses and not mious:
        return None
    figure, loss_axis = plt.subplots(figsize=(6, 3.5))
    if losses:
        loss_axis.plot(*zip(*losses, strict=True), color="tab:blue", label="train loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    if mious:
        miou_axis = loss_axis.twinx()
        miou_axis.plot(*zip(*mious, strict=True), "o-", color="tab:orange", label="val mIoU")
        miou_axis.set_ylabel("validation mIoU", color="tab:orange")
        miou_axis.set_ylim(0, 1)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def save_confusion_matrix(confusion, id2label: dict[int, str], path: str | Path, title: str | None = None) -> Path:
    """(C, C) confusion matrix (rows: true class, columns: predicted) -> PNG heat map normalised per true
    class (each row sums to 1: the diagonal is the class's recall), class names on both axes; cells are
    annotated when there are at most 20 classes. Rows of classes absent from the labels stay blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion, dtype=np.float64)
    num_labels = confusion.shape[0]
    totals = confusion.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.where(totals > 0, confusion / totals, np.nan)
    names = [str(id2label.get(index, index)) for index in range(num_labels)]
    side = min(4 + 0.35 * num_labels, 24)  # inches; 150 classes: 24 in at 100 dpi
    font = max(3, min(9, 0.5 * 72 * (side - 3) / max(num_labels, 1)))  # tick labels fit their row
    figure, axis = plt.subplots(figsize=(side + 1.5, side))
    image = axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(num_labels), names, rotation=90, fontsize=font)
    axis.set_yticks(range(num_labels), names, fontsize=font)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if num_labels <= 20:
        for row in range(num_labels):
            for column in range(num_labels):
                value = normalised[row, column]
                if np.isfinite(value) and value > 0:
                    colour = "white" if value > 0.5 else "black"
                    axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=font, color=colour)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    axis.set_title(title or "confusion matrix (normalised per true class)", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
