"""Per-sample seeds: the same (seed, epoch, index) gives the same augmentation in any process, persistent workers
included."""

import io

import numpy as np
import pytest
import torch
from datasets import Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image

from hfseg.data.collate import collate_segmentation
from hfseg.data.determinism import SeededSamples
from hfseg.data.labels import LabelSpec
from hfseg.data.preprocess import attach_transform
from hfseg.data.transforms import TrainTransform


def _png(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _seeded_pairs(count: int = 8) -> SeededSamples:
    rng = np.random.default_rng(0)
    images = [_png(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)) for _ in range(count)]
    masks = [_png(rng.integers(0, 3, (24, 30), dtype=np.uint8)) for _ in range(count)]
    features = Features({"image": ImageFeature(), "annotation": ImageFeature()})
    dataset = Dataset.from_dict({"image": images, "annotation": masks}, features=features)
    spec = LabelSpec({0: "a", 1: "b", 2: "c"})
    return SeededSamples(attach_transform(dataset, "image", "annotation", spec, TrainTransform(16)), seed=3)


def _epoch(loader) -> list[torch.Tensor]:
    return [batch["pixel_values"] for batch in loader]


@pytest.mark.slow
def test_persistent_workers_draw_each_epochs_augmentations():
    """Two persistent workers keep their dataset copies across epochs; they still see the epoch the main process
    sets, so epoch 1 equals epoch 1 drawn in the main process, and differs from epoch 0."""
    dataset = _seeded_pairs()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, num_workers=2, persistent_workers=True, collate_fn=collate_segmentation
    )
    dataset.set_epoch(0)
    first = _epoch(loader)
    dataset.set_epoch(1)
    second = _epoch(loader)

    reference = _seeded_pairs()
    reference.set_epoch(1)
    expected = _epoch(torch.utils.data.DataLoader(reference, batch_size=2, collate_fn=collate_segmentation))
    assert all(torch.equal(a, b) for a, b in zip(second, expected, strict=True))
    assert not torch.equal(first[0], second[0])
