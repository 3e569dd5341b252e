"""Kept so `from hfseg.segmentation_pipeline import SegmentationPipeline` goes on working; the code lives in
`hfseg.evaluation.pipeline`."""

from hfseg.evaluation.pipeline import SegmentationPipeline, segmentation_pipeline  # noqa: F401
