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

#: The model-config attribute (saved in config.json, next to id2label) that holds the run's label handling, so
#: `hfseg evaluate`, `hfseg predict` and the pipeline read pixel values as training did.
CONFIG_ATTRIBUTE = "hfseg_label_spec"


class MaskError(HfsegError):
    """A mask that cannot become training labels.

    `kind` names the problem as `hfseg doctor` reports it (colour_mask, unknown_colour, mask_mode, label_values,
    size_mismatch), `source` the file or row, `found` what is wrong and `fix` what to change. Training raises it;
    the doctor collects it as a `Problem` with the same four fields, so both say the same thing.
    """

    def __init__(self, kind: str, source: str, found: str, fix: str):
        super().__init__(f"{source}: {found}; {fix}")
        self.kind, self.source, self.found, self.fix = kind, source, found, fix


#: EXIF orientations that swap width and height (a quarter turn, with or without a mirror), as EXIF describes them.
QUARTER_TURNS = {
    5: "mirrored and rotated 90° counter-clockwise",
    6: "rotated 90° clockwise",
    7: "mirrored and rotated 90° clockwise",
    8: "rotated 90° counter-clockwise",
}


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of a PIL image (1, upright, when there is none)."""
    from PIL import ExifTags

    return int(image.getexif().get(ExifTags.Base.Orientation) or 1)


def check_same_size(
    mask_shape: tuple[int, ...], image_size: tuple[int, int], mask_name: str, image_name: str, orientation: int = 1
):
    """Raise `MaskError` (size_mismatch) unless an (H, W) mask matches an image of `image_size` (W, H).

    `image_size` is the size after the image's EXIF `orientation` is applied; a mask that matches the stored
    (un-rotated) pixels instead is told so, with the fix.
    """
    (height, width), (image_width, image_height) = mask_shape[:2], image_size
    if (height, width) == (image_height, image_width):
        return
    found = f"mask is {width}x{height} but its image {image_name} is {image_width}x{image_height}"
    if orientation in QUARTER_TURNS and (height, width) == (image_width, image_height):
        raise MaskError(
            "size_mismatch",
            mask_name,
            f"{found}: its EXIF orientation tag ({orientation}: {QUARTER_TURNS[orientation]}) makes it "
            f"{image_width}x{image_height}; the mask matches the stored pixels ({width}x{height})",
            f"strip the tag (`exiftool -Orientation= {image_name}`, or re-save the image without EXIF) if the "
            "stored pixels are upright, else rotate the mask the same way",
        )
    raise MaskError(
        "size_mismatch", mask_name, found, "masks must match their images pixel for pixel: fix or remove the pair"
    )


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
        ids = sorted(self.id2label)
        if ids != list(range(len(ids))):
            if min(ids) < 0 or len(ids) > 64:
                raise HfsegError(f"id2label ids must be 0..N-1 without gaps, got {ids[:10]}...")
            numbered = json.dumps({str(final): self.id2label[raw] for final, raw in enumerate(ids)})
            mapping = ", ".join(f'"{raw}": {final}' for final, raw in enumerate(ids))
            raise HfsegError(
                f"id2label ids must be 0..N-1 without gaps, got {ids}: these look like mask values; number the "
                f"classes 0..{len(ids) - 1} in id2label ({numbered}) and map the mask values with "
                f"--label_map '{{{mapping}}}'"
            )
        if self.reduce_labels and self.label_map:
            raise HfsegError("use either reduce_labels or label_map, not both (reduce_labels is itself a label map)")
        if self.label_map:
            self.label_map = {int(k): int(v) for k, v in self.label_map.items()}

    def decode(self, mask: Image.Image, source: str = "mask") -> np.ndarray:
        """PIL mask -> (H, W) raw values: colour-coded RGB masks through the palette, others as `decode_mask`.

        Palette ('P') masks always give their indices: their colours are only a display convention.
        """
        if self.palette and mask.mode in ("RGB", "RGBA") and not _equal_channels(mask):
            return colour_to_index(np.asarray(mask.convert("RGB")), self.palette, source)
        return decode_mask(mask, source)

    def save_to_config(self, config) -> None:
        """Write the label handling into a model config (`CONFIG_ATTRIBUTE`; JSON keys are strings); the class names
        are the config's own id2label."""
        label_map = {str(raw): final for raw, final in sorted((self.label_map or {}).items())}
        palette = {str(index): list(rgb) for index, rgb in sorted((self.palette or {}).items())}
        saved = {"ignore_index": self.ignore_index, "reduce_labels": self.reduce_labels}
        setattr(config, CONFIG_ATTRIBUTE, {**saved, "label_map": label_map or None, "palette": palette or None})

    @classmethod
    def from_config(cls, config, where: str = "config.json") -> LabelSpec | None:
        """The label handling a model was trained with, or None for a model saved without it (older runs, models
        from elsewhere).

        Raises:
            HfsegError: the saved entry is malformed, naming `where` and the field.
        """
        saved = getattr(config, CONFIG_ATTRIBUTE, None)
        if saved is None:
            return None
        try:
            palette = saved.get("palette")
            return cls(
                {int(k): v for k, v in config.id2label.items()},
                int(saved["ignore_index"]),
                bool(saved["reduce_labels"]),
                saved.get("label_map"),
                {int(k): tuple(int(c) for c in rgb) for k, rgb in palette.items()} if palette else None,
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise HfsegError(
                f"{where}: '{CONFIG_ATTRIBUTE}' is malformed ({error!r}); expected ignore_index, reduce_labels, "
                "label_map and palette as hfseg finetune writes them: remove the entry to fall back to the flags"
            ) from None

    def raw_values(self) -> np.ndarray:
        """(num_labels,) class id -> the raw mask value that stands for it: the inverse of `lookup_table`.

        With reduce_labels class k is raw k + 1. With a label map a class is the raw value the map sends to it;
        where several raw values go to one class, the smallest; a raw value the map lists wins over one that
        passes through unmapped (with {0: 0, 255: 1}, class 1 is 255, not 1).

        Raises:
            HfsegError: a class that no raw value becomes (the map sends its own value elsewhere).
        """
        if self.reduce_labels:
            return np.arange(1, self.num_labels + 1, dtype=np.int64)
        label_map = self.label_map or {}
        listed: dict[int, int] = {}
        for raw, final in sorted(label_map.items()):
            listed.setdefault(final, raw)
        values = []
        for index in range(self.num_labels):
            if index in listed:
                values.append(listed[index])
            elif index not in label_map:
                values.append(index)
            else:
                raise HfsegError(
                    f"class {index} ('{self.id2label[index]}') has no raw mask value: the label map sends raw "
                    f"{index} to {label_map[index]} and no raw value to {index}"
                )
        return np.array(values, dtype=np.int64)

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

    def labels_of(self, mask: Image.Image, source: str = "mask") -> np.ndarray:
        """PIL mask -> (H, W) int64 training labels: `decode` (palette included), then `encode`."""
        return self.encode(self.decode(mask, source), source)

    def map_values(self, raw: np.ndarray, source: str = "mask") -> np.ndarray:
        """(H, W) raw mask values -> (H, W) int64 final labels through reduce-labels and the label map, unchecked.

        Raises:
            MaskError: not a 2-D mask, or negative values (which would index the lookup table from its end).
        """
        raw = np.asarray(raw)
        if raw.ndim != 2:
            raise MaskError(
                "mask_mode", source, f"expected a single-channel mask, got shape {raw.shape}",
                "save masks as one-channel 8- or 16-bit index PNGs",
            )  # fmt: skip
        if raw.size and raw.min() < 0:
            raise MaskError(
                "label_values", source, f"negative mask values {int(raw.min())}", "masks must hold class ids >= 0"
            )
        return self.lookup_table(max(int(raw.max()) if raw.size else 0, 255))[raw]

    def encode(self, raw: np.ndarray, source: str = "mask") -> np.ndarray:
        """(H, W) raw mask values -> (H, W) int64 labels in 0..num_labels-1 or ignore_index.

        Raises:
            MaskError: a value that is neither a class nor the ignore index, naming `source` and the fix.
        """
        labels = self.map_values(raw, source)
        self.validate(labels, source)
        return labels

    def invalid_values(self, labels: np.ndarray) -> list[int]:
        """Final label values that are neither a class id nor the ignore index (at most 8, sorted)."""
        bad = (labels != self.ignore_index) & ((labels < 0) | (labels >= self.num_labels))
        return sorted({int(v) for v in np.unique(labels[bad])})[:8] if bad.any() else []

    def fix_hint(self, values: list[int] = ()) -> str:
        """What to change when a mask has the final label `values` outside id2label."""
        if not self.reduce_labels and not self.label_map and values and max(values) == self.num_labels:
            return "set --reduce_labels (the values look 1-based with 0 = unlabelled), or --label_map"
        return "set --label_map {raw: final id} (the ignore index as final id drops a value), or fix --id2label_file"

    def values_error(self, values: list[int], source: str, raw_values: list[int] | None = None) -> MaskError:
        """The `MaskError` (label_values) for final label `values` outside id2label (`raw_values`: before mapping)."""
        raw = f" (raw {raw_values})" if raw_values is not None else ""
        return MaskError(
            "label_values",
            source,
            f"has label values {values}{raw} but num_labels={self.num_labels} (ignore_index={self.ignore_index})",
            self.fix_hint(values),
        )

    def validate(self, labels: np.ndarray, source: str = "mask") -> None:
        values = self.invalid_values(labels)
        if values:
            raise self.values_error(values, source)


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
    other RGB masks are colour-coded and need a palette (`hfseg.data.labels.colour_to_index`).
    """
    if mask.mode in ("P", "L", "1"):
        return np.asarray(mask, dtype=np.uint8 if mask.mode != "1" else bool).astype(np.int64)
    if mask.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(mask).astype(np.int64)
    if mask.mode in ("RGB", "RGBA", "LA"):
        if _equal_channels(mask):
            return np.asarray(mask.convert("RGB"))[..., 0].astype(np.int64)
        raise MaskError(
            "colour_mask",
            source,
            "a colour-coded RGB mask, but an index mask was expected",
            "give the colour palette (--palette_file) or convert the masks to class indices",
        )
    raise MaskError("mask_mode", source, f"has unsupported mask mode {mask.mode}", "save masks as 8- or 16-bit PNG")


def load_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> RGB with EXIF orientation applied (grayscale, RGBA, palette, CMYK included)."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image) or image
    return image if image.mode == "RGB" else image.convert("RGB")


def _equal_channels(mask: Image.Image) -> bool:
    """True for a mask whose R, G and B are equal everywhere (an index mask saved as RGB)."""
    array = np.asarray(mask.convert("RGB"))
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def colour_to_index(rgb: np.ndarray, palette: dict[int, tuple[int, int, int]], source: str = "mask") -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) int64 ids through `palette` (id -> (R, G, B)).

    Raises:
        MaskError: a colour that is not in the palette, naming `source`, the colours and the fix.
    """
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: index for index, (r, g, b) in palette.items()}
    keys = np.array(sorted(table), dtype=np.int64)
    values = np.array([table[key] for key in keys], dtype=np.int64)
    position = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    known = keys[position] == codes
    if not known.all():
        unknown = [tuple(int(c) for c in rgb[y, x]) for y, x in zip(*np.nonzero(~known), strict=True)]
        colours = sorted(set(unknown))[:5]
        raise MaskError(
            "unknown_colour",
            source,
            f"has colours {colours} that are not in the palette ({len(palette)} colours)",
            "add them to --palette_file (use the ignore index as their id to skip them)",
        )
    return values[position]


def load_palette(path: str | Path) -> tuple[dict[int, tuple[int, int, int]], dict[int, str] | None]:
    """Read a colour palette: `(palette id -> (R, G, B), id2label or None)`.

    Formats: JSON `{id: [R, G, B]}`, JSON `[{"id": 0, "name": "road", "color": [R, G, B]}, ...]`, or a text
    file of `R G B [name]` lines (CamVid's `label_colors.txt`) whose line order gives the ids.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise HfsegError(f"--palette_file {path}: cannot read it ({error})") from None
    palette, names = {}, {}
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            entries = data.items() if isinstance(data, dict) else ((e["id"], e) for e in data)
            for key, value in entries:
                colour = value.get("color", value.get("colour")) if isinstance(value, dict) else value
                palette[int(key)] = tuple(int(c) for c in colour)
                if isinstance(value, dict) and "name" in value:
                    names[int(key)] = str(value["name"])
        else:
            lines = [line.split(maxsplit=3) for line in text.splitlines() if line.strip()]
            for index, parts in enumerate(lines):
                palette[index] = tuple(int(c) for c in parts[:3])
                if len(parts) > 3:
                    names[index] = parts[3].strip()
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise HfsegError(
            f"--palette_file {path}: cannot parse it ({error!r}); use JSON {{id: [R, G, B]}} or 'R G B name' lines"
        ) from None
    if any(len(colour) != 3 or not all(0 <= c <= 255 for c in colour) for colour in palette.values()):
        raise HfsegError(f"--palette_file {path}: every colour must be three values 0..255")
    if len(set(palette.values())) != len(palette):
        raise HfsegError(f"--palette_file {path}: the same colour is listed for two ids")
    return palette, (names or None)


def load_label_map(value: str | dict | None) -> dict[int, int] | None:
    """`--label_map`: a JSON object `{raw: final}` given inline or as a path to a JSON file."""
    if value is None or isinstance(value, dict):
        return {int(k): int(v) for k, v in value.items()} if value else None
    text = value
    if not value.lstrip().startswith("{"):
        try:
            text = Path(value).read_text()
        except OSError as error:
            raise HfsegError(f"--label_map {value}: not a JSON object and not a readable file ({error})") from None
    try:
        data = json.loads(text)
        return {int(k): int(v) for k, v in data.items()}
    except (json.JSONDecodeError, AttributeError, ValueError) as error:
        raise HfsegError(f"--label_map {value}: expected a JSON object {{raw value: final id}} ({error})") from None
