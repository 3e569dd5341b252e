"""Model logits at the labels' own resolution, in the field's inference modes.

- `whole`: one forward pass on the image as the eval transform gives it (resized to the model's input size);
  logits upsampled bilinearly to the original size.
- `slide`: the image, resized keeping its aspect ratio so its short side is `short_side` (mmsegmentation's
  test `Resize(keep_ratio=True)`), is covered by `crop_size` windows every `stride` pixels; each window's logits
  are upsampled to the window and overlapping logits averaged; memory is bounded by `crop_batch_size` windows.
- TTA: every (scale, flip) view is run in the mode above; the views' softmax probabilities, at the original
  size, are averaged (as mmsegmentation's `SegTTAModel`). Several views return log-probabilities, which
  are valid logits (argmax and cross-entropy act on them as on logits).

Mask-classification models (Mask2Former, MaskFormer, OneFormer, EoMT) have no per-pixel logits: their "logits" here are
per-pixel class scores (`mask_class_scores`), non-negative, upsampled, averaged and argmax'ed like logits; TTA
averages their per-pixel normalised scores and returns that mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from hfseg.data.collate import pad_pixel_values
from hfseg.errors import HfsegError
from hfseg.evaluation.metrics import upsample_logits
from hfseg.models.build import is_mask_classification
from hfseg.models.mask_classification import with_task_inputs

INFERENCE_MODES = ("whole", "slide")


@dataclass(frozen=True)
class InferenceOptions:
    """How logits are computed; the `--eval_*` fields of `SegTrainingArguments`, without the prefix.

    Attributes:
        mode: `whole` or `slide`.
        scales: TTA image scales relative to the mode's base size ((1.0,) = no multi-scale).
        flip: add horizontally flipped views.
        crop_size / stride: slide windows (square); default: the model's input size and 2/3 of it.
        short_side: slide mode resizes the image keeping its ratio to this short side (default: the model's
            input size; 0 keeps the original resolution, as Cityscapes protocols do).
        crop_batch_size: slide windows per forward pass.
    """

    mode: str = "whole"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crop_size: int | None = None
    stride: int | None = None
    short_side: int | None = None
    crop_batch_size: int = 8

    def __post_init__(self):
        if self.mode not in INFERENCE_MODES:
            raise HfsegError(f"inference mode '{self.mode}' (--eval_mode): choose one of {', '.join(INFERENCE_MODES)}")
        scales = tuple(float(scale) for scale in (self.scales or (1.0,)))
        if any(not math.isfinite(scale) or scale <= 0 for scale in scales):
            raise HfsegError(
                f"--eval_scales {list(scales)}: every scale must be a positive number, e.g. 0.75 1.0 1.25"
            )
        object.__setattr__(self, "scales", scales)
        for name in ("crop_size", "stride", "crop_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HfsegError(f"--eval_{name} is {value}; it must be a positive number of pixels")
        if self.crop_size and self.stride and self.stride > self.crop_size:
            raise HfsegError(
                f"--eval_stride {self.stride} is larger than --eval_crop_size {self.crop_size}: windows would leave "
                "gaps; use a stride <= the crop size (mmseg uses 2/3 of it)"
            )

    @classmethod
    def from_arguments(cls, args) -> InferenceOptions:
        """Options from an object with `eval_mode`, `eval_scales`, ... (SegTrainingArguments, tool arguments)."""
        defaults = cls()
        values = {name: getattr(args, f"eval_{name}", getattr(defaults, name)) for name in cls.__dataclass_fields__}
        values["crop_batch_size"] = values["crop_batch_size"] or defaults.crop_batch_size
        return cls(**values)

    def with_input_size(self, input_size: int | None) -> InferenceOptions:
        """Fill slide defaults from the model's input size (the image processor's `size`; 512 if it has none)."""
        if self.mode != "slide":
            return self
        crop_size = self.crop_size or input_size or 512
        short_side = input_size if self.short_side is None else self.short_side
        return replace(
            self, crop_size=crop_size, stride=self.stride or max(1, crop_size * 2 // 3), short_side=short_side
        )

    @property
    def is_plain_whole(self) -> bool:
        return self.mode == "whole" and self.scales == (1.0,) and not self.flip

    def describe(self) -> str:
        text = self.mode
        if self.mode == "slide":
            text += f" (crop {self.crop_size}, stride {self.stride}, short side {self.short_side or 'original'})"
        if self.scales != (1.0,):
            text += f", scales {list(self.scales)}"
        return text + (", flip" if self.flip else "")


def eval_transform_for(processor, options: InferenceOptions):
    """The eval transform a mode needs: `whole` resizes to the processor's (square) size; `slide` resizes
    keeping the aspect ratio to `short_side` (0: the original resolution)."""
    from hfseg.data.transforms import EvalTransform
    from hfseg.models.build import processor_input_size, processor_mean_std

    mean, std = processor_mean_std(processor)
    if options.mode == "slide":
        return EvalTransform(options.short_side or None, mean, std, keep_ratio=True)
    return EvalTransform(processor_input_size(processor), mean, std)


#: Mask-classification models whose mask logits transformers' `post_process_semantic_segmentation` upsamples to the
#: input size before the sigmoid (as the original Mask2Former and mmsegmentation do); MaskFormer's and OneFormer's
#: take the sigmoid at mask resolution (1/4 of the input).
SCORES_AT_INPUT_SIZE = frozenset({"mask2former", "eomt", "eomt_dinov3"})


def forward_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) -> (B, C, h', w') raw logits at the model's output resolution; for a mask-classification
    model, its per-pixel class scores (`mask_class_scores`) at mask resolution, or at the input size for the
    families in `SCORES_AT_INPUT_SIZE`."""
    if not is_mask_classification(model):
        return model(pixel_values=pixel_values).logits
    model_type = model.config.model_type
    outputs = model(**with_task_inputs(model, {"pixel_values": pixel_values}))  # OneFormer: "the task is semantic"
    size = tuple(pixel_values.shape[-2:]) if model_type in SCORES_AT_INPUT_SIZE else None
    return mask_class_scores(outputs.class_queries_logits, outputs.masks_queries_logits, size)


def mask_class_scores(
    class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Per-pixel class scores of a mask-classification model, as transformers' `post_process_semantic_segmentation`
    computes them: softmax over the classes without the last ("no object") column, times the sigmoid of each
    query's mask, summed over the queries.

    Args:
        class_queries_logits: (B, Q, C + 1).
        masks_queries_logits: (B, Q, h, w), upsampled bilinearly to `size` before the sigmoid when given.

    Returns:
        (B, C, h, w) scores in [0, Q], or (B, C, *size).
    """
    if size is not None and tuple(masks_queries_logits.shape[-2:]) != tuple(size):
        masks_queries_logits = F.interpolate(masks_queries_logits, size=size, mode="bilinear", align_corners=False)
    class_probabilities = class_queries_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", class_probabilities, masks_queries_logits.sigmoid())


def scores_as_logits(scores: torch.Tensor) -> torch.Tensor:
    """Mask-classification scores (or their TTA mean) -> logits whose softmax is the scores normalised per pixel:
    their log, kept finite where a score is 0. Argmax is unchanged; cross-entropy on them is the negative log of
    the true class's share of the pixel's score."""
    return scores.float().clamp_min(torch.finfo(torch.float32).tiny).log()


def slide_windows(height: int, width: int, crop_size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) windows covering an image, mmsegmentation's grid: every `stride` pixels,
    the last window shifted back to end at the border; windows are min(crop, image) pixels on each side."""

    def starts(length: int) -> list[int]:
        count = max(length - crop_size + stride - 1, 0) // stride + 1
        return [max(min(i * stride + crop_size, length) - crop_size, 0) for i in range(count)]

    crop_h, crop_w = min(crop_size, height), min(crop_size, width)
    return [(top, top + crop_h, left, left + crop_w) for top in starts(height) for left in starts(width)]


def slide_logits(model, pixel_values: torch.Tensor, crop_size: int, stride: int, crop_batch_size: int = 8):
    """(B, 3, H, W) -> (B, C, H, W) logits averaged over overlapping windows, or, when one window covers the
    image, that window's logits as the model returns them (exactly `whole` on this input).

    Windows are run `crop_batch_size` at a time; besides the model, memory holds one (B, C, H, W) sum.
    """
    batch, _, height, width = pixel_values.shape
    windows = slide_windows(height, width, crop_size, stride)
    if len(windows) == 1:
        return forward_logits(model, pixel_values)
    summed = counts = None
    jobs = [(index, window) for index in range(batch) for window in windows]
    for start in range(0, len(jobs), crop_batch_size):
        chunk = jobs[start : start + crop_batch_size]
        crops = torch.stack([pixel_values[i, :, top:bottom, left:right] for i, (top, bottom, left, right) in chunk])
        logits = upsample_logits(forward_logits(model, crops), tuple(crops.shape[-2:])).float()
        if summed is None:
            summed = logits.new_zeros((batch, logits.shape[1], height, width))
            counts = logits.new_zeros((1, 1, height, width))
        for crop_logits, (index, (top, bottom, left, right)) in zip(logits, chunk, strict=True):
            summed[index, :, top:bottom, left:right] += crop_logits
            if index == 0:
                counts[..., top:bottom, left:right] += 1
    return summed / counts


def _view_logits(model, pixel_values: torch.Tensor, options: InferenceOptions, scale: float, flip: bool):
    """Logits of one TTA view, flipped back: (B, 3, H, W) -> (B, C, h', w')."""
    if scale != 1.0:
        height, width = pixel_values.shape[-2:]
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        pixel_values = F.interpolate(pixel_values, size=size, mode="bilinear", align_corners=False, antialias=True)
    if flip:
        pixel_values = pixel_values.flip(-1)
    if options.mode == "slide":
        logits = slide_logits(model, pixel_values, options.crop_size, options.stride, options.crop_batch_size)
    else:
        logits = forward_logits(model, pixel_values)
    return logits.flip(-1) if flip else logits


def logits_at_sizes(
    model,
    pixel_values: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    options: InferenceOptions | None = None,
    pixel_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[torch.Tensor]:
    """Each sample's logits at its own (original) size: list of (C, H_i, W_i).

    Args:
        pixel_values: (B, 3, h, w); with `pixel_sizes`, images of different sizes padded at the bottom/right
            (each is then cropped back and run on its own).
        sizes: each sample's original (H_i, W_i), where the logits are upsampled to.
        options: inference mode and TTA (default: plain `whole`, one forward pass for the batch).
    """
    return list(iter_logits_at_sizes(model, pixel_values, sizes, options, pixel_sizes))


def iter_logits_at_sizes(
    model,
    pixel_values: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    options: InferenceOptions | None = None,
    pixel_sizes: Sequence[tuple[int, int]] | None = None,
) -> Iterator[torch.Tensor]:
    """`logits_at_sizes`, one sample at a time: only one sample's full-size logits exist at once, so evaluation
    memory does not grow with the batch's image sizes. Without TTA the forward pass stays batched; with TTA each
    sample's views run on their own (the same number of forward passes, batch 1)."""
    options = options or InferenceOptions()
    if options.mode == "slide" and not options.crop_size:
        raise HfsegError("slide inference needs a crop size: set --eval_crop_size")
    sizes = [tuple(int(v) for v in size) for size in sizes]
    if pixel_sizes is not None and len({tuple(int(v) for v in size) for size in pixel_sizes}) > 1:
        for index, (height, width) in enumerate(pixel_sizes):
            image = pixel_values[index : index + 1, :, : int(height), : int(width)]
            yield from iter_logits_at_sizes(model, image, sizes[index : index + 1], options)
        return
    if pixel_sizes is not None:
        height, width = (int(v) for v in pixel_sizes[0])
        pixel_values = pixel_values[..., :height, :width]
    views = [(scale, flip) for scale in options.scales for flip in ((False, True) if options.flip else (False,))]
    if len(views) == 1:
        logits = _view_logits(model, pixel_values, options, *views[0])
        for i, size in enumerate(sizes):
            yield upsample_logits(logits[i : i + 1], size)[0]
        return
    # TTA: one sample at a time, so only its full-size sum of probabilities and one view exist at once.
    mask_classification = is_mask_classification(model)
    for i, size in enumerate(sizes):
        summed = None
        for scale, flip in views:
            logits = _view_logits(model, pixel_values[i : i + 1], options, scale, flip)
            view = upsample_logits(logits, size)[0].float()
            view = (scores_as_logits(view) if mask_classification else view).softmax(0)
            summed = view if summed is None else summed.add_(view)
            del logits, view
        mean = summed / len(views)
        yield mean if mask_classification else scores_as_logits(mean)


@torch.no_grad()
def predict_masks(
    model, images, transform, batch_size: int = 8, options: InferenceOptions | None = None
) -> list[torch.Tensor]:
    """Images of any size (PIL, or (C, H, W) bands) -> (H_i, W_i) class-id maps at each image's original size.

    Args:
        transform: maps (PIL image, None) -> (pixel_values (3, h, w), None), e.g. `eval_transform_for(...)`.
        options: inference mode and TTA (default: plain `whole`).
    """
    model.eval()
    masks = []
    for start in range(0, len(images), batch_size):
        batch_logits = predict_logits(model, images[start : start + batch_size], transform, options)
        masks += [logits.argmax(0).cpu() for logits in batch_logits]
    return masks


@torch.no_grad()
def predict_logits(model, images, transform, options: InferenceOptions | None = None) -> Iterator[torch.Tensor]:
    """One batch of images (PIL, or (C, H, W) bands) -> (C, H_i, W_i) logits at the images' original sizes, one
    image at a time."""
    parameter = next(model.parameters(), None)  # None: a model run outside torch (ONNX Runtime) takes fp32 on CPU
    pixel_values, pixel_sizes = pad_pixel_values([transform(image, None)[0] for image in images])
    sizes = [
        tuple(image.shape[-2:]) if isinstance(image, torch.Tensor) else (image.height, image.width) for image in images
    ]
    if parameter is not None:
        pixel_values = pixel_values.to(parameter.device, dtype=parameter.dtype)
    yield from iter_logits_at_sizes(model, pixel_values, sizes, options, pixel_sizes)
