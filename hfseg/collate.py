"""Batch assembly: stack pixel values, pad labels of different sizes with the ignore index."""

from __future__ import annotations

import torch


def collate_segmentation(examples: list[dict], ignore_index: int = 255) -> dict[str, torch.Tensor]:
    """Examples {pixel_values (3, h, w), labels (H_i, W_i)} -> batch.

    Returns:
        pixel_values (B, 3, h, w); labels (B, max H, max W) padded at the bottom/right with
        `ignore_index`; label_sizes (B, 2), each label's own (H_i, W_i), so evaluation can upsample
        logits to every image's true size.
    """
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if examples[0].get("labels") is None:
        return batch
    labels = [example["labels"] for example in examples]
    sizes = torch.tensor([label.shape[-2:] for label in labels], dtype=torch.long)
    height, width = (int(v) for v in sizes.max(dim=0).values)
    padded = torch.full((len(labels), height, width), ignore_index, dtype=torch.long)
    for index, label in enumerate(labels):
        padded[index, : label.shape[-2], : label.shape[-1]] = label
    batch["labels"] = padded
    batch["label_sizes"] = sizes
    return batch
