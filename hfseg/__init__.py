"""hfseg: fine-tune, evaluate and ship semantic-segmentation models on the Hugging Face stack.

The public names below are imported on first use (module `__getattr__`), so `hfseg --help` and `hfseg doctor`
start without loading torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "DataArguments": "hfseg.config",
    "HfsegError": "hfseg.errors",
    "LabelSpec": "hfseg.data.labels",
    "ModelArguments": "hfseg.config",
    "SegTrainer": "hfseg.training.trainer",
    "SegTrainingArguments": "hfseg.training.arguments",
    "StreamingSegmentationMetric": "hfseg.evaluation.metrics",
    "compute_segmentation_metrics": "hfseg.evaluation.metrics",
    "make_synthetic_dataset": "hfseg.data.synthetic",
    "parse_args": "hfseg.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hfseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
