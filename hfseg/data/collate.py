"""Batch assembly: stack pixel values, pad labels of different sizes with the ignore index."""

from __future__ import annotations

import torch

from hfseg.data.mask_targets import TextQueries, batch_mask_targets


def collate_segmentation(
    examples: list[dict], ignore_index: int = 255, mask_targets: bool = False, text_queries: TextQueries | None = None
) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """Examples {pixel_values (3, h, w), labels (H_i, W_i)} -> batch.

    Returns:
        pixel_values (B, 3, h, w); labels (B, max H, max W) padded at the bottom/right with
        `ignore_index`; label_sizes (B, 2), each label's own (H_i, W_i), so evaluation can upsample
        logits to every image's true size. Images of different sizes (eval transforms that keep the
        aspect ratio) are padded with 0 at the bottom/right and `pixel_sizes` (B, 2) gives their own sizes.
        With `mask_targets` (mask-classification models), also `mask_labels` [(K_i, max H, max W)] and
        `class_labels` [(K_i,)]: per-image lists of the padded labels' binary masks and class ids
        (`hfseg.data.mask_targets`). With `text_queries` (OneFormer trained with its contrastive loss), also
        `text_inputs` (B, num_text, context_length): the token ids of each image's text queries.
    """
    pixel_values, pixel_sizes = pad_pixel_values([example["pixel_values"] for example in examples])
    batch = {"pixel_values": pixel_values}
    if pixel_sizes is not None:
        batch["pixel_sizes"] = pixel_sizes
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
    if mask_targets:  # from the padded labels, so the masks line up with the padded images
        batch.update(batch_mask_targets(list(padded), ignore_index))
        if text_queries is not None:
            batch["text_inputs"] = text_queries(batch["class_labels"])
    return batch


def pad_pixel_values(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(3, h_i, w_i) images -> ((B, 3, max h, max w), None) when all sizes are equal (stacked as they are),
    else padded with 0 at the bottom/right and their own sizes (B, 2)."""
    sizes = torch.tensor([image.shape[-2:] for image in images], dtype=torch.long)
    if (sizes == sizes[0]).all():
        return torch.stack(images), None
    height, width = (int(v) for v in sizes.max(dim=0).values)
    padded = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for index, image in enumerate(images):
        padded[index, :, : image.shape[-2], : image.shape[-1]] = image
    return padded, sizes
