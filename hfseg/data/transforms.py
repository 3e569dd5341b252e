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

from hfseg.data.bands import TYPE_MAX

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


class PhotometricDistortion(v2.ColorJitter):
    """`v2.ColorJitter` (same parameters, same random draws, same order of operations) whose hue step on uint8
    images is `adjust_hue`, the costliest step made about 3x faster."""

    def transform(self, inpt, params):
        if isinstance(inpt, tv_tensors.Image) and inpt.shape[-3] != 3:  # gray or N bands: no colour to jitter
            return tv_tensors.wrap(adjust_bands(inpt.as_subclass(torch.Tensor), params), like=inpt)
        if not isinstance(inpt, tv_tensors.Image) or inpt.dtype != torch.uint8 or params["hue_factor"] is None:
            return super().transform(inpt, params)
        output = inpt
        for fn_id in params["fn_idx"].tolist():
            if fn_id == 3:
                output = tv_tensors.wrap(adjust_hue(output.as_subclass(torch.Tensor), params["hue_factor"]), like=inpt)
            else:
                output = super().transform(output, {**params, "fn_idx": torch.tensor([fn_id])})
        return output


def adjust_hue(image: torch.Tensor, hue_factor: float) -> torch.Tensor:
    """(3, H, W) uint8 RGB -> the same with hue rotated by `hue_factor` turns, as `TF.adjust_hue` (HSV round
    trip) computes it, in about a third of the time: the rotation keeps each pixel's max and min channel (V and
    S), so only where the middle channel lies between them changes. Equal to `TF.adjust_hue` within 1 level
    (float rounding before the uint8 conversion)."""
    if hue_factor == 0:
        return image
    red, green, blue = image.float().unbind(0)
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
    return out.mul_((256.0 - 1e-3) / 255.0).to(torch.uint8)


def adjust_bands(image: torch.Tensor, params: dict) -> torch.Tensor:
    """(C, H, W) image of any band count and type -> `ColorJitter`'s brightness and contrast steps with its draws
    (`params`), in its order, over all bands at once; saturation and hue need RGB and are left out. Integer
    images are clamped to their type's range, as `ColorJitter` does; float images are not (their range is
    their own)."""
    bound = TYPE_MAX.get(image.dtype)
    output = image.float()
    for fn_id in params["fn_idx"].tolist():
        if fn_id == 0 and params["brightness_factor"] is not None:
            output = output * params["brightness_factor"]
        elif fn_id == 1 and params["contrast_factor"] is not None:
            mean = output.mean()
            output = (output - mean) * params["contrast_factor"] + mean
        else:
            continue
        if bound is not None:
            output = output.clamp_(0, bound)
    return output.to(image.dtype)


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
        after = [v2.RandomHorizontalFlip(hflip_prob)]
        if photometric:
            after.append(
                PhotometricDistortion(brightness=32 / 255, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18 / 360)
            )
        after += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]
        self.after = v2.Compose(after)

    def __call__(self, image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB image ((3, H, W) uint8 tensor or PIL) + (H, W) int labels -> pixel_values (3, crop, crop) float,
        labels (crop, crop) int64. The image stays uint8 until the final normalisation; (C, H, W) bands
        (`read_bands`: uint8, uint16 or float32) keep their type until then too, scaled to [0, 1] by it."""
        image, mask = to_tv_tensors(image, mask, self.crop.ignore_index)
        image, mask = self.scale(image, mask)
        image, mask = self.crop(image, mask)
        image, mask = self.after(image, mask)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)[0].long()


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
