"""Joint image/mask augmentation with torchvision.transforms.v2 (`tv_tensors.Image` + `tv_tensors.Mask`).

Masks are only ever resampled with nearest-neighbour (v2 does so for `Mask`), and padded with the
ignore index, never 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hfseg.data.bands import type_max

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScale(v2.Transform):
    """Resize so the short side is `base_size * r`, r ~ U(ratio_range) (mmseg's RandomResize, keep_ratio)."""

    def __init__(self, base_size: int, ratio_range: Sequence[float] = (0.5, 2.0)):
        super().__init__()
        self.base_size = base_size
        self.ratio_range = tuple(ratio_range)

    def make_params(self, flat_inputs):
        low, high = self.ratio_range
        ratio = float(torch.empty(1).uniform_(low, high))
        return {"size": max(1, int(round(self.base_size * ratio)))}

    def transform(self, inpt, params):
        return TF.resize(inpt, size=params["size"], antialias=True)


class CatMaxRatioCrop(torch.nn.Module):
    """Random crop (padding with 0 / ignore_index when smaller) that retries up to 10 times while one
    class covers more than `cat_max_ratio` of the crop's labelled pixels (mmseg's RandomCrop)."""

    def __init__(self, size: int, cat_max_ratio: float = 0.75, ignore_index: int = 255, attempts: int = 10):
        super().__init__()
        self.size = size
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.attempts = attempts

    def forward(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        height, width = image.shape[-2:]
        pad_h, pad_w = max(self.size - height, 0), max(self.size - width, 0)
        if pad_h or pad_w:
            image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
            mask = TF.pad(mask, [0, 0, pad_w, pad_h], fill=self.ignore_index)
            height, width = image.shape[-2:]
        for attempt in range(self.attempts):
            top = int(torch.randint(0, height - self.size + 1, (1,)))
            left = int(torch.randint(0, width - self.size + 1, (1,)))
            crop = mask[..., top : top + self.size, left : left + self.size]
            if self.cat_max_ratio >= 1 or attempt == self.attempts - 1 or self._balanced(crop):
                break
        return (
            TF.crop(image, top, left, self.size, self.size),
            TF.crop(mask, top, left, self.size, self.size),
        )

    def _balanced(self, crop: torch.Tensor) -> bool:
        if crop.dtype == torch.uint8:  # the common case: count all 256 values, then drop the ignore index's
            counts = torch.bincount(crop.reshape(-1), minlength=256)
            counts[self.ignore_index] = 0
        else:  # labels are >= 0 apart from the ignore index
            counts = torch.bincount(crop[crop != self.ignore_index].long())
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio


class PhotometricDistortion:
    """`v2.ColorJitter`'s photometric distortion (its parameters, its random draws, its order of operations) on a
    uint8-valued image held as float32, converted once: each step computes what torchvision computes on uint8
    (the same float arithmetic, truncated to whole levels after each step), without a uint8 round trip per step.
    The hue step is `rotate_hue`, equal to torchvision's HSV round trip within 1 level on < 0.1% of pixels.

    `(C, H, W)` float32 holding an image's values -> the same, changed in place where possible. `bound` is the
    maximum of the image's own type (255 for uint8, 65535 for uint16): values are clamped to it and truncated to
    whole levels after each step; None (a float image) does neither. Not 3 channels (gray, N bands): brightness
    and contrast over all bands, as torchvision does for grayscale; saturation and hue need RGB.
    """

    def __init__(self, brightness=None, contrast=None, saturation=None, hue=None):
        self.jitter = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)

    def __call__(self, pixels: torch.Tensor, bound: float | None = 255.0) -> torch.Tensor:
        params = self.jitter.make_params([pixels])
        color = pixels.shape[0] == 3
        for fn_id in params["fn_idx"].tolist():
            if fn_id == 0 and params["brightness_factor"] is not None:
                pixels = _blend_levels(pixels, 0.0, params["brightness_factor"], bound)
            elif fn_id == 1 and params["contrast_factor"] is not None:
                mean = (_grayscale_levels(pixels, bound) if color else pixels).mean()
                pixels = _blend_levels(pixels, mean, params["contrast_factor"], bound)
            elif fn_id == 2 and params["saturation_factor"] is not None and color:
                pixels = _blend_levels(pixels, _grayscale_levels(pixels, bound), params["saturation_factor"], bound)
            elif fn_id == 3 and params["hue_factor"] is not None and color:
                pixels = rotate_hue(pixels, params["hue_factor"])
                if bound is not None:  # torchvision's float -> integer conversion
                    pixels = pixels.mul_((bound + 1.0 - 1e-3) / bound).floor_()
        return pixels


def _grayscale_levels(pixels: torch.Tensor, bound: float | None) -> torch.Tensor:
    """(3, H, W) values -> (1, H, W) luma, truncated to whole levels (as torchvision does for integer images)
    unless `bound` is None."""
    red, green, blue = pixels.unbind(0)
    luma = red.mul(0.2989).add_(green, alpha=0.587).add_(blue, alpha=0.114)
    return (luma if bound is None else luma.floor_()).unsqueeze(0)


def _blend_levels(pixels: torch.Tensor, other, ratio: float, bound: float | None) -> torch.Tensor:
    """torchvision's `_blend`: `pixels * ratio + other * (1 - ratio)`, for an integer image clamped to [0, bound]
    and truncated."""
    ratio = float(ratio)
    blended = pixels.mul_(ratio)
    if isinstance(other, torch.Tensor):
        blended = blended.add_(other, alpha=1.0 - ratio)
    elif other:
        blended = blended.add_(other * (1.0 - ratio))
    return blended if bound is None else blended.clamp_(0, bound).floor_()


def adjust_hue(image: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """(3, H, W) uint8 RGB -> the same with hue rotated by `hue_factor` turns, as `TF.adjust_hue` (HSV round
    trip) computes it, in about a third of the time. Equal to `TF.adjust_hue` within 1 level (float rounding
    before the uint8 conversion)."""
    if hue_factor == 0:
        return image
    return rotate_hue(image.float(), hue_factor).mul_((256.0 - 1e-3) / 255.0).to(torch.uint8)


def rotate_hue(pixels: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """(3, H, W) float RGB levels -> a new float tensor with hue rotated by `hue_factor` turns, not yet rounded.

    The rotation keeps each pixel's max and min channel (V and S), so only where the middle channel lies between
    them changes."""
    red, green, blue = pixels.unbind(0)
    high = torch.maximum(torch.maximum(red, green), blue)
    low = torch.minimum(torch.minimum(red, green), blue)
    spread = high - low
    safe = torch.where(spread > 0, spread, 1.0)
    # Hue in sixths of a turn (0 = red, 2 = green, 4 = blue), as torchvision's _rgb_to_hsv.
    hue = torch.where(high == green, 2.0 + (blue - red) / safe, 4.0 + (red - green) / safe)
    hue = torch.where(high == red, (green - blue) / safe, hue)
    hue = torch.remainder(hue + 6.0 * hue_factor, 6.0)
    out = torch.empty((3, *hue.shape), dtype=torch.float32)
    for channel, centre in enumerate((0.0, 2.0, 4.0)):
        # Share of the spread above the minimum: 1 within 1/6 turn of the channel's own hue, 0 beyond 2/6.
        distance = torch.remainder(hue - centre + 3.0, 6.0).sub_(3.0).abs_()
        out[channel] = distance.sub_(2.0).neg_().clamp_(0.0, 1.0).mul_(spread).add_(low)
    return out


def normalize_levels(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], bound: float | None = 255.0
) -> torch.Tensor:
    """Float values in [0, bound] -> `(pixels / bound - mean) / std` per channel, in place: `ToDtype(scale=True)`
    then `Normalize` in one pass (`bound` None: a float image, already in its own units)."""
    scale = torch.tensor(std, dtype=pixels.dtype).mul_(bound or 1.0).view(-1, 1, 1)
    shift = torch.tensor(mean, dtype=pixels.dtype).mul_(bound or 1.0).view(-1, 1, 1)
    return pixels.sub_(shift).div_(scale)


class TrainTransform:
    """Random scale -> cat-max-ratio crop -> flip -> photometric distortion -> normalise."""

    def __init__(
        self,
        crop_size: int,
        scale_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        hflip_prob: float = 0.5,
        photometric: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        ignore_index: int = 255,
    ):
        self.scale = RandomScale(crop_size, scale_range)
        self.crop = CatMaxRatioCrop(crop_size, cat_max_ratio, ignore_index)
        self.flip = v2.RandomHorizontalFlip(hflip_prob)
        self.photometric = (
            PhotometricDistortion(brightness=32 / 255, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18 / 360)
            if photometric
            else None
        )
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB image ((3, H, W) uint8 tensor or PIL) + (H, W) int labels -> pixel_values (3, crop, crop) float,
        labels (crop, crop) int64. The image stays in its own type (uint8; or, as `read_bands` gives (C, H, W)
        bands, uint16 or float32) through scale, crop and flip; the photometric distortion and the normalisation
        (scaled to [0, 1] by the type's maximum) work on one float copy."""
        image, mask = to_tv_tensors(image, mask, self.crop.ignore_index)
        image, mask = self.scale(image, mask)
        image, mask = self.crop(image, mask)
        image, mask = self.flip(image, mask)
        bound = type_max(image.dtype)
        pixels = image.as_subclass(torch.Tensor).float()
        if self.photometric is not None:
            pixels = self.photometric(pixels, bound)
        return normalize_levels(pixels, self.mean, self.std, bound), mask.as_subclass(torch.Tensor)[0].long()


class EvalTransform:
    """Resize the image to the model's input size and normalise; the label keeps its own resolution.

    With `keep_ratio`, the short side becomes `size` and the long side follows (slide inference); `size`
    None keeps the original resolution.
    """

    def __init__(self, size: int | None, mean=IMAGENET_MEAN, std=IMAGENET_STD, keep_ratio: bool = False):
        steps = [v2.Resize(size if keep_ratio else (size, size), antialias=True)] if size else []
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
        self.image_transform = v2.Compose(steps)

    def __call__(self, image, mask: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """RGB image ((3, H, W) uint8 tensor or PIL), or (C, H, W) bands of any type, + (H, W) labels or None ->
        (pixel_values (C, h, w) float, int64 labels)."""
        pixel_values = self.image_transform(image_tensor(image)).as_subclass(torch.Tensor)
        labels = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()
        return pixel_values, labels


def to_tv_tensors(image, mask: np.ndarray, ignore_index: int = 255) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """RGB image (PIL or (3, H, W) uint8 tensor) + (H, W) labels -> (Image (3, H, W) uint8, Mask (1, H, W)).

    The mask is uint8 when its values and `ignore_index` (its padding) fit, which nearest resizing handles
    natively; otherwise int64 (16-bit ids, a negative ignore index), never truncated.
    """
    mask = np.asarray(mask)
    fits = 0 <= ignore_index <= 255 and (mask.size == 0 or (mask.min() >= 0 and mask.max() <= 255))
    mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8 if fits else np.int64))
    return tv_tensors.Image(image_tensor(image)), tv_tensors.Mask(mask[None])


def image_tensor(image) -> torch.Tensor:
    """A (C, H, W) tensor as it is; a PIL image as (3, H, W) uint8 (or as its own bands)."""
    return image if isinstance(image, torch.Tensor) else TF.pil_to_tensor(image)
