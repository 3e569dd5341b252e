"""Semantic maps -> mask-classification targets (per-class binary masks + class ids) and the collate that keeps
them as per-image lists."""

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import RandomCrop

from hfseg.data.collate import collate_segmentation
from hfseg.data.labels import LabelSpec
from hfseg.data.mask_targets import mask_targets


def test_one_mask_per_present_class_and_ignore_in_none():
    labels = torch.tensor([[0, 0, 3, 255], [3, 3, 255, 255]])
    masks, classes = mask_targets(labels, ignore_index=255)
    assert classes.tolist() == [0, 3] and classes.dtype == torch.int64
    assert masks.dtype == torch.float32 and masks.shape == (2, 2, 4)
    assert masks[0].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
    assert masks[1].tolist() == [[0, 0, 1, 0], [1, 1, 0, 0]]
    assert masks.sum(0)[labels == 255].eq(0).all()  # ignore pixels belong to no mask
    assert masks.sum(0)[labels != 255].eq(1).all()  # every other pixel to exactly one


def test_all_ignore_crop_has_no_masks():
    masks, classes = mask_targets(torch.full((5, 7), 255), ignore_index=255)
    assert masks.shape == (0, 5, 7) and classes.shape == (0,) and classes.dtype == torch.int64


def test_classes_that_vanish_after_cropping_get_no_empty_mask():
    labels = torch.zeros(1, 8, 8, dtype=torch.uint8)
    labels[0, :, 6:] = 2  # class 2 lives only in the two right-most columns
    labels[0, 4:, :6] = 1
    image = tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8))
    torch.manual_seed(0)
    _, cropped = RandomCrop(4)(image, tv_tensors.Mask(labels))
    while cropped[0].eq(2).any():  # draw until a crop misses class 2 (seeded: deterministic)
        _, cropped = RandomCrop(4)(image, tv_tensors.Mask(labels))
    masks, classes = mask_targets(cropped[0].long(), ignore_index=255)
    assert 2 not in classes.tolist() and len(classes) >= 1
    assert (masks.flatten(1).sum(1) > 0).all()  # no mask without a pixel


def test_binary_zero_one_set_gives_two_complementary_masks():
    labels = torch.tensor([[0, 1], [1, 255]])
    masks, classes = mask_targets(labels, ignore_index=255)
    assert classes.tolist() == [0, 1]
    assert (masks[0] + masks[1]).tolist() == [[1, 1], [1, 0]]


def test_255_mapped_to_a_class_is_a_class():
    raw = np.array([[0, 255], [255, 255]], dtype=np.uint8)  # ISBI EM: 0 = membrane, 255 = cell
    spec = LabelSpec({0: "membrane", 1: "cell"}, label_map={0: 0, 255: 1})
    masks, classes = mask_targets(torch.from_numpy(spec.encode(raw)), spec.ignore_index)
    assert classes.tolist() == [0, 1]
    assert masks[1].bool().tolist() == (raw == 255).tolist()
    # 255 kept as a class id itself, with another ignore index: a class like any other.
    masks, classes = mask_targets(torch.from_numpy(raw.astype(np.int64)), ignore_index=254)
    assert classes.tolist() == [0, 255] and masks[1].sum() == 3


def test_collate_keeps_ragged_lists_aligned_with_padded_labels():
    examples = [
        {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.tensor([[0, 1, 1, 1]] * 4)},
        {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.full((2, 3), 255)},  # smaller and all ignore
        {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.full((4, 4), 2)},
    ]
    batch = collate_segmentation(examples, ignore_index=255, mask_targets=True)
    assert batch["labels"].shape == (3, 4, 4)
    assert [classes.tolist() for classes in batch["class_labels"]] == [[0, 1], [], [2]]
    assert [tuple(masks.shape) for masks in batch["mask_labels"]] == [(2, 4, 4), (0, 4, 4), (1, 4, 4)]
    assert batch["mask_labels"][0][1].sum() == 12 and batch["mask_labels"][2].sum() == 16
    assert "mask_labels" not in collate_segmentation(examples, ignore_index=255)  # per-pixel models: unchanged
