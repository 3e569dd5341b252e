"""One image/mask pair read the way training reads it, and what is wrong with it: the file, the finding, the fix.

The pre-training check and `hfseg doctor` scan pairs with `inspect_pair`; training names a pair that breaks past
that scan with it too, and `hfseg predict` describes an unreadable image with `read_problem`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import ExifTags, ImageOps, UnidentifiedImageError
from PIL import Image as PILImage

from hfseg.data.adapters.base import Problem
from hfseg.data.bands import band_array, is_tiff
from hfseg.data.labels import LabelSpec, MaskError, check_same_size, decode_mask, exif_orientation, load_rgb
from hfseg.errors import HfsegError

READ_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, PILImage.DecompressionBombError)
FIX_CORRUPT = "re-export or re-download the file, or remove the pair (--skip_bad_samples skips it)"


def read_problem(error: Exception, name: str) -> Problem:
    """The `Problem` behind a failed read of file `name`: no permission, no such file, or a damaged file."""
    if isinstance(error, PermissionError):
        return Problem(
            "permission",
            name,
            "permission denied: this user may not read it",
            f"make it readable (`chmod a+r {name}`) or run as a user who can read it",
        )
    if isinstance(error, FileNotFoundError):
        if not Path(name).is_absolute():
            return Problem(
                "missing",
                name,
                f"file not found: a relative path, and neither the current folder ({Path.cwd()}) nor the data "
                "file's folder has it",
                "store absolute paths, or paths relative to the data file's folder, or run from the folder the "
                "paths are relative to",
            )
        return Problem("missing", name, "file not found", "restore the file or remove the pair")
    return Problem("corrupt", name, f"cannot be read ({error})", FIX_CORRUPT)


def open_value(value, fallback: str, transpose: bool = True) -> tuple[PILImage.Image, str]:
    """A row's image value (PIL image, path, or datasets' {path, bytes}) -> (loaded PIL image, its name).

    With `transpose`, the EXIF orientation is applied as `datasets.Image` decodes it.
    """
    if isinstance(value, PILImage.Image):
        return value, getattr(value, "filename", "") or fallback
    path, data = (value, None) if isinstance(value, str) else (value.get("path"), value.get("bytes"))
    name = path or fallback
    image = PILImage.open(io.BytesIO(data) if data is not None else path)
    image.load()
    if transpose and image.getexif().get(ExifTags.Base.Orientation) is not None:
        image = ImageOps.exif_transpose(image)
    return image, name


def is_tiff_value(value) -> bool:
    """Whether a row's image value (PIL image, path, or {path, bytes}) holds a TIFF file."""
    if isinstance(value, PILImage.Image):
        return value.format == "TIFF"
    path, data = (value, None) if isinstance(value, str) else (value.get("path"), value.get("bytes"))
    if data is None:
        if not path or not Path(path).is_file():
            return False  # missing files are reported by the PIL read
        with open(path, "rb") as file:
            data = file.read(4)
    return is_tiff(data)


def describe_value(value, fallback: str) -> str:
    """The file a row's image value was read from, else `fallback`."""
    if isinstance(value, PILImage.Image):
        return getattr(value, "filename", "") or fallback
    return (value if isinstance(value, str) else value.get("path")) or fallback


def inspect_pair(image_value, mask_value, spec: LabelSpec | None, row: str):
    """Decode one pair the way training does and collect what is wrong with it.

    Returns:
        (image size (W, H) or None, final labels (H, W) or None, raw mask values or None, problems).
    """
    problems = []
    loaded = {}
    for role, value in (("image", image_value), ("mask", mask_value)):
        try:
            if role == "image" and is_tiff_value(value):  # multi-band and 16-bit TIFFs: PIL reads one page or none
                loaded[role] = band_array(value), describe_value(value, f"{row} ({role})")
                continue
            loaded[role] = open_value(value, f"{row} ({role})", transpose=role == "mask")
        except (*READ_ERRORS, HfsegError) as error:  # HfsegError: a TIFF that holds no single image of bands
            name = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
            problems.append(read_problem(error, name or f"{row} ({role})"))
    if problems:
        return None, None, None, problems
    (image, image_name), (mask, mask_name) = loaded["image"], loaded["mask"]
    if isinstance(image, np.ndarray):  # (H, W, C) bands of a TIFF
        orientation, size = None, (image.shape[1], image.shape[0])
    else:
        try:
            orientation = exif_orientation(image)
            rgb = load_rgb(image)
        except READ_ERRORS as error:
            problem = Problem("corrupt", image_name, f"cannot be converted to RGB ({error})", FIX_CORRUPT)
            return None, None, None, [problem]
        size = (rgb.width, rgb.height)
    try:
        raw = spec.decode(mask, mask_name) if spec is not None else decode_mask(mask, mask_name)
    except MaskError as error:
        return size, None, None, [Problem.from_error(error)]
    try:
        check_same_size(raw.shape, size, mask_name, image_name, orientation)
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
