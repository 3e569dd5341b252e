"""The embedded demo data looks like a real data set and is deterministic."""

import numpy as np
from datasets import Image

from hfseg.data.synthetic import SYNTHETIC_ID2LABEL, make_synthetic_dataset


def test_columns_features_and_determinism():
    first = make_synthetic_dataset(train_size=5, eval_size=2, seed=3)
    second = make_synthetic_dataset(train_size=5, eval_size=2, seed=3)
    assert set(first) == {"train", "validation"}
    assert isinstance(first["train"].features["image"], Image)
    assert isinstance(first["train"].features["annotation"], Image)
    for a, b in zip(first["train"], second["train"], strict=True):
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert np.array_equal(np.asarray(a["annotation"]), np.asarray(b["annotation"]))


def test_sizes_vary_and_labels_are_class_ids():
    data = make_synthetic_dataset(train_size=12, eval_size=1, seed=0)
    sizes = {row["image"].size for row in data["train"]}
    assert len(sizes) > 1
    values = set()
    for row in data["train"]:
        mask = np.asarray(row["annotation"])
        assert mask.shape == row["image"].size[::-1]
        values |= set(np.unique(mask).tolist())
    assert values <= set(SYNTHETIC_ID2LABEL)
    assert len(values) >= 4


def test_other_seed_gives_other_scenes():
    a = make_synthetic_dataset(train_size=2, eval_size=1, seed=0)["train"][0]["annotation"]
    b = make_synthetic_dataset(train_size=2, eval_size=1, seed=1)["train"][0]["annotation"]
    assert a.size != b.size or not np.array_equal(np.asarray(a), np.asarray(b))
