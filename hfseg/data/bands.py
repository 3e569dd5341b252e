"""Images read with their own bands and bit depth (`--num_channels` other than 3): grayscale kept 1-band, N-band
TIFFs through tifffile, 8-bit, 16-bit or float pixels kept in their own type until normalisation.

Pixel units: `ToDtype(float32, scale=True)` divides uint8 by 255 and uint16 by 65535 and keeps float as it is, so
`--image_mean`/`--image_std` (and `hfseg doctor --stats`) are in [0, 1] units of the image's own type.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from hfseg.errors import HfsegError

if TYPE_CHECKING:
    import torch

#: TIFF and BigTIFF, little and big endian.
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: tifffile's axis letters of a band axis: samples, channels, and pages stacked as bands.
BAND_AXES = "SCQIZ"
#: PIL modes read as they are (others, e.g. palette or CMYK, are converted to RGB first).
PIL_BAND_MODES = ("L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F", "1")
#: PIL modes of more than 8 bits per sample (16-bit, 32-bit integer and float grayscale).
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The largest value of each integer type kept, for scaling to [0, 1] (by name: this module's file reading, which
#: `hfseg doctor` uses, imports no torch).
TYPE_MAX = {"torch.uint8": 255.0, "torch.uint16": 65535.0}


def type_max(dtype) -> float | None:
    """255 for uint8, 65535 for uint16 (torch dtypes); None for a float type, already in its own units."""
    return TYPE_MAX.get(str(dtype))


def is_tiff(data: bytes) -> bool:
    return data[:4] in TIFF_SIGNATURES


def is_png16(data: bytes) -> bool:
    """Whether encoded bytes are a 16-bit PNG (the bit depth in its IHDR header), which PIL reads as 8-bit unless
    it is grayscale."""
    return data.startswith(PNG_SIGNATURE) and data[24:25] == b"\x10"


def is_high_bit_depth(image) -> bool:
    """Whether an image (PIL, path or undecoded `datasets.Image` row {'bytes', 'path'}) has more than 8 bits per
    sample, which PIL's RGB conversion clips or truncates: PIL modes I;16, I and F, 16-bit PNGs, and TIFFs of
    16-bit, 32-bit or float samples. A PIL image of another mode is checked through its file, when it has one."""
    if isinstance(image, Image.Image):
        if image.mode in HIGH_BIT_MODES:
            return True
        image = getattr(image, "filename", "") if image.format in ("PNG", "TIFF") else ""
    data, path = (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (None, str(image))
    if data is None and not (path and os.path.isfile(path)):
        return False  # no local file: a remote one is opened by datasets' decoder, as 8-bit RGB
    source = io.BytesIO(data) if data is not None else path
    if data is None:
        with open(path, "rb") as file:
            data = file.read(32)  # the signature, and a PNG's bit depth
    if is_tiff(data):
        import tifffile

        with tifffile.TiffFile(source) as tiff:
            return tiff.series[0].dtype not in (np.uint8, np.bool_)
    if data.startswith(PNG_SIGNATURE):
        return is_png16(data)
    with Image.open(source) as opened:  # reads the header only
        return opened.mode in HIGH_BIT_MODES


def read_bands(image, num_channels: int | None = None, name: str = "image") -> torch.Tensor:
    """An image (PIL, path, undecoded `datasets.Image` row {'bytes', 'path'}, (H, W[, C]) array or (C, H, W)
    tensor) -> (C, H, W) tensor of its own type: uint8, uint16 or float32.

    Raises:
        HfsegError: the image has another number of bands than `num_channels`, or a pixel type with no [0, 1]
            scale (signed integers, 32-bit), naming `name` and the fix.
    """
    import torch

    if isinstance(image, torch.Tensor):
        bands = image if image.ndim == 3 else image[None]
    else:
        array = band_array(image)
        name = _name_of(image, name)
        channels_first = _supported_type(array, name).transpose(2, 0, 1)
        bands = torch.from_numpy(np.require(channels_first, requirements=("C", "W")))  # PIL's arrays are read-only
    if num_channels is not None and bands.shape[0] != num_channels:
        raise HfsegError(
            f"{name} has {bands.shape[0]} band(s) but the model reads --num_channels {num_channels}; give images "
            f"with {num_channels} band(s) or set --num_channels {bands.shape[0]}"
        )
    return bands


def band_array(image) -> np.ndarray:
    """An image in any of `read_bands`' forms -> (H, W, C) array of its stored type (EXIF orientation applied)."""
    if isinstance(image, np.ndarray):
        return image[..., None] if image.ndim == 2 else image
    if isinstance(image, Image.Image):
        filename = getattr(image, "filename", "")
        # PIL reads one page of a TIFF band stack, and 16-bit colour PNGs as 8 bits: read the file itself
        if image.format in ("TIFF", "PNG") and filename and os.path.isfile(filename):
            return band_array(filename)
        return pil_array(image)
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
    else:
        data, path = None, str(image)
    if data is None:
        if not path or not os.path.isfile(path):
            raise HfsegError(f"{path or 'an image'}: file not found; give the path of an existing image file")
        data = Path(path).read_bytes()
    if is_tiff(data):
        return tiff_array(data)
    if is_png16(data):
        return png16_array(data)
    return pil_array(Image.open(io.BytesIO(data)))


def png16_array(data: bytes) -> np.ndarray:
    """A 16-bit PNG -> (H, W, C) uint16 with all its bands (gray, gray+alpha, RGB, RGBA), EXIF orientation applied:
    decoded by torchvision, as PIL reads 16-bit colour PNGs as 8 bits."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_image

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        bands = decode_image(
            torch.frombuffer(bytearray(data), dtype=torch.uint8),
            mode=ImageReadMode.UNCHANGED,
            apply_exif_orientation=True,
        )
    return bands.permute(1, 2, 0).numpy()


def tiff_array(data: bytes) -> np.ndarray:
    """A TIFF's first series -> (H, W, C): interleaved (YXS), band-sequential (SYX, CYX) or one page per band."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        series = tiff.series[0]
        array, axes = series.asarray(), series.axes
    for axis in reversed(range(array.ndim)):  # 1-sized axes other than the image's own
        if array.shape[axis] == 1 and axes[axis] not in "YX" and array.ndim > 2:
            array, axes = array.squeeze(axis), axes[:axis] + axes[axis + 1 :]
    if array.ndim == 2:
        return array[..., None]
    band_axes = [axis for axis, letter in enumerate(axes) if letter in BAND_AXES]
    if array.ndim != 3 or len(band_axes) != 1 or "Y" not in axes or "X" not in axes:
        raise HfsegError(
            f"a TIFF with axes {axes} and shape {list(array.shape)}: expected one image of bands (YXS, SYX or "
            "one page per band); save one image per file"
        )
    return np.moveaxis(array, band_axes[0], -1)


def pil_array(image: Image.Image) -> np.ndarray:
    """A PIL image -> (H, W, C) array of its stored type: 16-bit and float grayscale kept, palette/CMYK as RGB."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode == "1":
        image = image.convert("L")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    elif image.mode not in PIL_BAND_MODES:
        image = image.convert("RGB")
    array = np.asarray(image)
    if image.mode.startswith("I;16"):
        array = array.astype(np.uint16)
    return array[..., None] if array.ndim == 2 else array


def read_rgb_bands(image, name: str = "image") -> torch.Tensor:
    """A 16-bit or float image in any of `read_bands`' forms -> (3, H, W) in its own type (uint16 or float32) for
    a 3-channel model, as PIL's RGB conversion arranges bands: gray repeated, alpha dropped.

    Raises:
        HfsegError: other than 1-4 bands (gray, gray+alpha, RGB, RGBA), naming the file and --num_channels.
    """
    bands = read_bands(image, name=name)
    if bands.shape[0] in (1, 2):
        return bands[:1].repeat(3, 1, 1)
    if bands.shape[0] in (3, 4):
        return bands[:3]
    raise HfsegError(
        f"{_name_of(image, name)} has {bands.shape[0]} band(s) but the model reads 3 (RGB); set --num_channels "
        f"{bands.shape[0]} to read all of them"
    )


def _supported_type(array: np.ndarray, name: str) -> np.ndarray:
    """uint8, uint16 and float32 as they are; other integers that fit in 16 bits as uint16; floats as float32."""
    if array.dtype in (np.uint8, np.uint16, np.float32):
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer) and (array.size == 0 or (array.min() >= 0 and array.max() <= 65535)):
        return array.astype(np.uint16)
    raise HfsegError(
        f"{name} has {array.dtype} pixels (range {array.min()}..{array.max()}), which have no [0, 1] scale; "
        "save it as 8- or 16-bit unsigned integers or as float32"
    )


def _name_of(image, fallback: str) -> str:
    if isinstance(image, dict):
        return image.get("path") or fallback
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    return getattr(image, "filename", "") or fallback


def scaled_float(pixels: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(C, H, W) uint8/uint16/float -> `dtype` (float32 by default) in [0, 1] units, as
    `ToDtype(float32, scale=True)` scales it."""
    import torch

    values = pixels.to(dtype or torch.float32)
    bound = type_max(pixels.dtype)
    return values if bound is None else values / bound


def preview_rgb(pixels: torch.Tensor) -> Image.Image:
    """(C, H, W) bands of any type -> an 8-bit RGB picture for figures and overlays: the first three bands (or the
    first, gray), each stretched between its 1st and 99th percentile."""
    import torch

    bands = scaled_float(pixels)
    bands = bands[:3] if bands.shape[0] >= 3 else bands[:1].expand(3, -1, -1)
    flat = bands.reshape(3, -1)[:, :: max(1, bands[0].numel() // 1_000_000)]  # quantile's input is bounded
    low = flat.quantile(0.01, dim=1)[:, None, None] if flat.shape[1] else torch.zeros(3, 1, 1)
    high = flat.quantile(0.99, dim=1)[:, None, None] if flat.shape[1] else torch.ones(3, 1, 1)
    stretched = ((bands - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
    return Image.fromarray((stretched * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def band_statistics(images, total: int | None = None, progress: bool = True) -> tuple[list[float], list[float]]:
    """Per-band mean and (population) std of images in [0, 1] units (`scaled_float`), streamed one image at a
    time: (count, mean, sum of squared deviations) merged per image (Chan et al.), exact in float64.

    Args:
        images: an iterable of anything `read_bands` reads (undecoded rows stream best).
        total: the number of images, for the progress bar.

    Raises:
        HfsegError: no images, or images with different numbers of bands (naming the first that differs).
    """
    import torch
    from tqdm.auto import tqdm

    count, mean, squares = 0, None, None
    for index, image in enumerate(tqdm(images, total=total, desc="band statistics", unit="img", disable=not progress)):
        pixels = scaled_float(read_bands(image, name=f"image {index}"), torch.float64)
        values = pixels.reshape(pixels.shape[0], -1)
        if mean is not None and values.shape[0] != mean.shape[0]:
            raise HfsegError(
                f"{_name_of(image, f'image {index}')} has {values.shape[0]} band(s) but the images before it have "
                f"{mean.shape[0]}; every image of a data set needs the same bands"
            )
        if values.shape[1] == 0:
            continue
        image_mean = values.mean(dim=1)
        image_squares = (values - image_mean[:, None]).square().sum(dim=1)
        if mean is None:
            count, mean, squares = values.shape[1], image_mean, image_squares
            continue
        delta, merged = image_mean - mean, count + values.shape[1]
        mean = mean + delta * values.shape[1] / merged
        squares = squares + image_squares + delta.square() * count * values.shape[1] / merged
        count = merged
    if mean is None:
        raise HfsegError(
            "no image pixels to compute band statistics from; point the data flags at a split with images"
        )
    return mean.tolist(), (squares / count).sqrt().tolist()


def recipe_lines(mean: list[float], std: list[float]) -> str:
    """The recipe fields that normalise with `mean`/`std`: `image_mean: [...]`, `image_std: [...]`,
    `num_channels: N`."""
    return "\n".join(
        [
            "image_mean: [" + ", ".join(f"{value:.6g}" for value in mean) + "]",
            "image_std: [" + ", ".join(f"{value:.6g}" for value in std) + "]",
            f"num_channels: {len(mean)}",
        ]
    )
