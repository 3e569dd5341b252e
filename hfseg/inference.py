"""Model logits at the labels' own resolution. `whole` mode: one forward pass on the resized image,
logits upsampled bilinearly to each image's original size."""

from __future__ import annotations

import torch

from hfseg.metrics import upsample_logits


def forward_logits(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, h, w) -> (B, C, h', w') raw logits at the model's output resolution."""
    return model(pixel_values=pixel_values).logits


def logits_at_sizes(model, pixel_values: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """One forward pass, then each sample's logits upsampled to its own size: list of (C, H_i, W_i)."""
    logits = forward_logits(model, pixel_values)
    return [upsample_logits(logits[i : i + 1], tuple(size))[0] for i, size in enumerate(sizes)]


@torch.no_grad()
def predict_masks(model, images, transform, batch_size: int = 8) -> list[torch.Tensor]:
    """PIL images of any size -> (H_i, W_i) class-id maps at each image's original size.

    Args:
        transform: maps (PIL image, None) -> (pixel_values (3, h, w), None), e.g. `EvalTransform`.
    """
    model.eval()
    device = next(model.parameters()).device
    masks = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixel_values = torch.stack([transform(image, None)[0] for image in chunk]).to(device)
        sizes = [(image.height, image.width) for image in chunk]
        masks += [logits.argmax(0).cpu() for logits in logits_at_sizes(model, pixel_values, sizes)]
    return masks
