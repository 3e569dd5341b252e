"""Embedded demo data: procedurally drawn scenes of textured shapes, deterministic by seed.

Exposed as an ordinary `datasets.DatasetDict` with `image`/`annotation` Image columns, so the rest of
hfseg cannot tell it from a real data set; nothing binary is committed.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image

SYNTHETIC_ID2LABEL = {0: "background", 1: "disc", 2: "box", 3: "triangle", 4: "striped_ellipse"}

# Base colours; each object is jittered around its class's colour and textured, so colour alone is a
# strong but imperfect cue (shape matters at the edges and where colours drift).
_CLASS_COLOURS = {1: (220, 60, 50), 2: (60, 170, 70), 3: (60, 90, 220), 4: (230, 200, 60)}


def draw_scene(rng: np.random.Generator, min_size: int = 96, max_size: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (H, W, 3) uint8 image and (H, W) uint8 mask of `SYNTHETIC_ID2LABEL` ids."""
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = _background(rng, yy, xx)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        label = int(rng.integers(1, len(SYNTHETIC_ID2LABEL)))
        region = _shape(rng, label, yy, xx, height, width)
        colour = np.array(_CLASS_COLOURS[label], dtype=np.float32) + rng.normal(0, 18, size=3)
        texture = rng.normal(0, 10, size=(height, width, 1))
        if label == 4:
            period = rng.uniform(4, 8)
            angle = rng.uniform(0, np.pi)
            stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)[..., None] > 0
            texture = texture + np.where(stripes, 35.0, -35.0)
        image[region] = np.clip(colour + texture, 0, 255)[region]
        mask[region] = label
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    base = rng.uniform(70, 170, size=3)
    gradient = rng.uniform(-0.4, 0.4, size=(2, 3))
    blotches = np.sin(xx / rng.uniform(5, 15))[..., None] * np.cos(yy / rng.uniform(5, 15))[..., None]
    return (base + yy[..., None] * gradient[0] + xx[..., None] * gradient[1] + 20 * blotches).astype(np.float32)


def _shape(rng, label: int, yy, xx, height: int, width: int) -> np.ndarray:
    """Boolean region of one object of class `label`."""
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    radius = rng.uniform(0.1, 0.25) * min(height, width)
    if label == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    if label == 2:
        half_h, half_w = radius * rng.uniform(0.6, 1.2), radius * rng.uniform(0.6, 1.2)
        return (np.abs(yy - cy) <= half_h) & (np.abs(xx - cx) <= half_w)
    if label == 3:
        # Upward triangle: inside when below the apex and within the widening sides.
        top = cy - radius
        depth = yy - top
        return (depth >= 0) & (depth <= 1.8 * radius) & (np.abs(xx - cx) <= depth * 0.6)
    axis_y, axis_x = radius * rng.uniform(0.5, 0.9), radius * rng.uniform(1.0, 1.5)
    return ((yy - cy) / axis_y) ** 2 + ((xx - cx) / axis_x) ** 2 <= 1


def make_synthetic_dataset(
    train_size: int = 400, eval_size: int = 40, seed: int = 0, min_size: int = 96, max_size: int = 192
) -> DatasetDict:
    """The demo data set: `train` and `validation` splits of `image`/`annotation` pairs.

    The class names travel in each split's `info.description` as JSON and via `SYNTHETIC_ID2LABEL`.
    """
    features = Features({"image": Image(), "annotation": Image()})
    splits = {}
    for offset, (split, size) in enumerate((("train", train_size), ("validation", eval_size))):
        rng = np.random.default_rng([seed, offset])
        images, masks = zip(*(draw_scene(rng, min_size, max_size) for _ in range(size)), strict=True)
        splits[split] = Dataset.from_dict({"image": list(images), "annotation": list(masks)}, features=features)
    return DatasetDict(splits)
