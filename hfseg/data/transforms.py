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
        values, counts = torch.unique(crop[crop != self.ignore_index], return_counts=True)
        return len(values) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio


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
            after.append(v2.ColorJitter(brightness=32 / 255, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18 / 360))
        after += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]
        self.after = v2.Compose(after)

    def __call__(self, image, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL RGB image + (H, W) int labels -> pixel_values (3, crop, crop) float, labels (crop, crop) int64."""
        image, mask = to_tv_tensors(image, mask)
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
        pixel_values = self.image_transform(TF.pil_to_tensor(image)).as_subclass(torch.Tensor)
        labels = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask)).long()
        return pixel_values, labels


def to_tv_tensors(image, mask: np.ndarray) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """PIL image + (H, W) labels -> (Image (3, H, W) uint8, Mask (1, H, W) int64)."""
    image = tv_tensors.Image(TF.pil_to_tensor(image))
    mask = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).long()[None])
    return image, mask
