"""Semantic maps -> mask-classification targets: one binary mask and one class id per class present (and, for
OneFormer's contrastive loss, one text query per class present).

Mask2Former, MaskFormer, OneFormer and EoMT train on a set of (class id, binary mask) pairs per image rather than a
per-pixel label map. Ignored pixels are 0 in every mask and never a class; an image (or crop) that is all ignore has
no masks at all, which the models' Hungarian-matched loss accepts (every query is then matched to "no object").
"""

from __future__ import annotations

import torch


def mask_targets(labels: torch.Tensor, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (H, W) int -> (mask_labels (K, H, W) float 0/1, class_labels (K,) int64), K = classes present.

    Classes come in increasing id order; `ignore_index` is left out of every mask (a value the label spec maps to a
    class, e.g. 255 in a 0/255 binary set with another ignore index, is a class like any other).
    """
    class_labels = torch.unique(labels)
    class_labels = class_labels[class_labels != ignore_index].long()
    mask_labels = (labels[None] == class_labels[:, None, None]).float()
    return mask_labels, class_labels


def batch_mask_targets(labels: list[torch.Tensor], ignore_index: int = 255) -> dict[str, list[torch.Tensor]]:
    """Per-image (H_i, W_i) label maps -> {"mask_labels": [(K_i, H_i, W_i)], "class_labels": [(K_i,)]}: lists, not
    stacked, since every image has its own number of classes."""
    targets = [mask_targets(label, ignore_index) for label in labels]
    return {"mask_labels": [masks for masks, _ in targets], "class_labels": [classes for _, classes in targets]}


#: The text OneFormer's task token is computed from, for semantic segmentation (as `OneFormerProcessor` writes it).
SEMANTIC_TASK_TEXT = "the task is semantic"


def text_token_ids(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    """texts -> (N, length) int64 token ids, truncated or padded to `length` with 0 (not the tokenizer's pad id), as
    `OneFormerProcessor` tokenizes OneFormer's task and text inputs."""
    tokens = tokenizer(texts, padding="max_length", max_length=length, truncation=True)
    return torch.tensor(tokens["input_ids"], dtype=torch.long) * torch.tensor(tokens["attention_mask"])


class TextQueries:
    """Per-image text queries of OneFormer's query-text contrastive loss, built from the classes present as
    transformers' `OneFormerImageProcessor` builds them for semantic maps: "a photo with a {name}" for each class
    present, in class-id order (the order of `class_labels`), then "a semantic photo" up to `num_text` texts, each
    tokenized to `context_length`. Unlike transformers' processor, the class counts are per image, as in the
    authors' dataset mapper (transformers' accumulates them over the images of one call).

    Args:
        tokenizer: the model's CLIP tokenizer.
        id2label: class names by id.
        num_text: texts per image, `config.num_queries - config.text_encoder_n_ctx`.
        context_length: `config.text_encoder_context_length`.
    """

    def __init__(self, tokenizer, id2label: dict[int, str], num_text: int, context_length: int):
        names = [id2label[key] for key in sorted(id2label, key=int)]
        self.class_texts = text_token_ids(tokenizer, [f"a photo with a {name}" for name in names], context_length)
        self.filler = text_token_ids(tokenizer, ["a semantic photo"], context_length)[0]
        self.num_text = num_text

    def __call__(self, class_labels: list[torch.Tensor]) -> torch.Tensor:
        """[(K_i,)] class ids -> (B, num_text, context_length) token ids."""
        batch = self.filler.repeat(len(class_labels), self.num_text, 1)
        for index, classes in enumerate(class_labels):
            present = classes[: self.num_text].long()
            batch[index, : len(present)] = self.class_texts[present]
        return batch
