"""Augmentations that a resumed run redraws exactly: each training sample gets its own seed (seed, epoch, index).

Trainer restores the global RNG state when it resumes, but the data loader has by then already made the next batch
(accelerate looks one batch ahead), so augmentations drawn from the global RNG differ after a resume. Drawing each
sample's augmentation from its own seed, with the global RNGs left untouched, makes them independent of when and in
which process a batch is made.
"""

from __future__ import annotations

import math
import multiprocessing
import random

import numpy as np
import torch
from transformers import TrainerCallback


class SeededSamples(torch.utils.data.Dataset):
    """`dataset[index]` computed under RNGs (torch CPU, numpy, random) seeded from (seed, epoch, index).

    Args:
        dataset: a map-style dataset whose items are random (e.g. a `datasets.Dataset` with a train transform).
        seed: the run's seed.
    """

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        # Shared memory: persistent DataLoader workers keep their own copy of the dataset, and read the epoch the
        # main process sets here.
        self._epoch = multiprocessing.Value("q", 0, lock=False)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(2, np.uint64)[0] >> 1)

    def __getitem__(self, index):
        seed = self.sample_seed(index)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: CUDA RNG state (dropout on GPU) stays untouched
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


class SetDatasetEpoch(TrainerCallback):
    """Tell a `SeededSamples` training set the epoch before its data loader starts the epoch."""

    def __init__(self, dataset: SeededSamples):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(math.floor(state.epoch + 1e-9))


def seed_samples(dataset, seed: int):
    """`SeededSamples(dataset, seed)` for map-style data; a streamed (iterable) data set is returned as it is,
    since it has no per-index access to seed."""
    import datasets

    if isinstance(dataset, (datasets.IterableDataset, torch.utils.data.IterableDataset)):
        return dataset
    return SeededSamples(dataset, seed)
