"""The label contract: class names, ignore index, reduce-labels, remapping and mask decoding, in one place.

Every mask goes through `LabelSpec.encode` exactly once (in the adapter's transform); nothing downstream,
the saved image processor included, changes label values again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hfseg.errors import HfsegError


@dataclass
class LabelSpec:
    """How raw mask values become training labels.

    Attributes:
        id2label: final class id -> name (ids 0..num_labels-1).
        ignore_index: label value that is neither trained on nor scored.
        reduce_labels: raw 0 -> ignore_index, raw k -> k-1 (ADE20K-style "0 = other").
        label_map: raw value -> final id (or ignore_index); raw values not listed stay as they are.
        palette: final id -> (R, G, B), for colour-coded masks.
    """

    id2label: dict[int, str]
    ignore_index: int = 255
    reduce_labels: bool = False
    label_map: dict[int, int] | None = None
    palette: dict[int, tuple[int, int, int]] | None = field(default=None)

    def __post_init__(self):
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise HfsegError(f"id2label ids must be 0..N-1 without gaps, got {sorted(self.id2label)[:10]}...")
        if self.reduce_labels and self.label_map:
            raise HfsegError("use either reduce_labels or label_map, not both (reduce_labels is itself a label map)")
        if self.label_map:
            self.label_map = {int(k): int(v) for k, v in self.label_map.items()}

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in self.id2label.items()}

    def lookup_table(self, max_value: int = 255) -> np.ndarray:
        """Raw value -> final label, as an array indexable by raw values 0..max_value."""
        table = np.arange(max_value + 1, dtype=np.int64)
        if self.reduce_labels:
            table = table - 1
            table[0] = self.ignore_index
            if self.ignore_index <= max_value:
                table[self.ignore_index] = self.ignore_index
        for raw, final in (self.label_map or {}).items():
            if raw <= max_value:
                table[raw] = final
        return table

    def encode(self, raw: np.ndarray, source: str = "mask") -> np.ndarray:
        """(H, W) raw mask values -> (H, W) int64 labels in 0..num_labels-1 or ignore_index.

        Raises:
            HfsegError: a value that is neither a class nor the ignore index, naming `source` and the fix.
        """
        raw = np.asarray(raw)
        if raw.ndim != 2:
            raise HfsegError(f"{source}: expected a single-channel mask, got shape {raw.shape}")
        if raw.size and raw.min() < 0:
            raise HfsegError(f"{source}: negative mask values {int(raw.min())}")
        max_value = max(int(raw.max()) if raw.size else 0, 255)
        labels = self.lookup_table(max_value)[raw]
        self.validate(labels, source)
        return labels

    def validate(self, labels: np.ndarray, source: str = "mask") -> None:
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_labels))
        if bad.any():
            values = sorted({int(v) for v in np.unique(labels[bad])})[:8]
            hint = "set --reduce_labels" if not self.reduce_labels and 0 not in self.id2label else "set --label_map"
            raise HfsegError(
                f"{source} has label values {values} but num_labels={self.num_labels} "
                f"(ignore_index={self.ignore_index}); {hint}, or fix id2label"
            )


def load_id2label(path: str | Path) -> dict[int, str]:
    """Read an `{id: name}` JSON file (or a list of names)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise HfsegError(f"cannot read id2label from {path}: {error}") from None
    if isinstance(data, list):
        return dict(enumerate(data))
    return {int(k): v for k, v in data.items()}


def decode_mask(mask: Image.Image, source: str = "mask") -> np.ndarray:
    """PIL mask -> (H, W) integer array of raw values, without truncating 16-bit masks.

    Palette ('P') masks give their indices; RGB masks whose channels are equal give one channel;
    other RGB masks are colour-coded and need a palette (`hfseg.labels.colour_to_index`).
    """
    if mask.mode in ("P", "L", "1"):
        return np.asarray(mask, dtype=np.uint8 if mask.mode != "1" else bool).astype(np.int64)
    if mask.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(mask).astype(np.int64)
    if mask.mode in ("RGB", "RGBA", "LA"):
        array = np.asarray(mask.convert("RGB"))
        if (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all():
            return array[..., 0].astype(np.int64)
        raise HfsegError(
            f"{source} is a colour-coded RGB mask, but an index mask was expected; "
            "give the colour palette (--palette_file) or convert the masks to class indices"
        )
    raise HfsegError(f"{source} has unsupported mask mode {mask.mode}; save masks as 8- or 16-bit PNG")


def load_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> RGB with EXIF orientation applied (grayscale, RGBA, palette, CMYK included)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image
    return image if image.mode == "RGB" else image.convert("RGB")
