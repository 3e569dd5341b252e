"""hfseg: fine-tune, evaluate and ship semantic-segmentation models on the Hugging Face stack."""

from hfseg.config import DataArguments, ModelArguments, SegTrainingArguments, parse_args
from hfseg.data.labels import LabelSpec
from hfseg.data.synthetic import make_synthetic_dataset
from hfseg.errors import HfsegError
from hfseg.evaluation.metrics import StreamingSegmentationMetric, compute_segmentation_metrics
from hfseg.training.trainer import SegTrainer

__version__ = "0.1.0"

__all__ = [
    "DataArguments",
    "HfsegError",
    "LabelSpec",
    "ModelArguments",
    "SegTrainer",
    "SegTrainingArguments",
    "StreamingSegmentationMetric",
    "compute_segmentation_metrics",
    "make_synthetic_dataset",
    "parse_args",
]
