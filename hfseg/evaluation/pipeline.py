"""hfseg's inference modes (slide windows, multi-scale + flip TTA) behind the `image-segmentation` pipeline.

    from transformers import pipeline
    from hfseg.evaluation.pipeline import SegmentationPipeline

    segmenter = pipeline("image-segmentation", model="outputs/demo", pipeline_class=SegmentationPipeline,
                         mode="slide", flip=True)
    segments = segmenter("image.png", scales=[0.75, 1.0, 1.25])  # options per call override the defaults

Returns what `ImageSegmentationPipeline` returns for semantic segmentation: one {"label", "mask", "score": None}
per class present. Plain `pipeline("image-segmentation", model=...)` keeps working on the same saved RGB models; a
model of `num_channels` other than 3 takes a file path, a (H, W, C) array or a (C, H, W) tensor here, read with its
own bands and type and normalised with the saved processor's per-band mean/std. A 16-bit or float image (a file path or
a PIL image) is read as training reads it, in its own type and scaled by the type's maximum, where transformers'
`load_image` would clip it to 8-bit RGB.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers import ImageSegmentationPipeline, pipeline
from transformers.image_utils import load_image

from hfseg.data.bands import is_high_bit_depth, read_bands, read_rgb_bands
from hfseg.data.labels import load_rgb
from hfseg.data.preprocess import is_band_input
from hfseg.evaluation.inference import InferenceOptions, eval_transform_for, logits_at_sizes
from hfseg.models.build import processor_input_size

#: Pipeline keyword arguments that are `InferenceOptions` fields.
OPTION_NAMES = tuple(InferenceOptions.__dataclass_fields__)


class SegmentationPipeline(ImageSegmentationPipeline):
    """`ImageSegmentationPipeline` (semantic) whose inference takes hfseg's options: `mode` ("whole" or
    "slide"), `scales`, `flip`, `crop_size`, `stride`, `short_side`, `crop_batch_size` (see
    `hfseg.evaluation.inference.InferenceOptions`). Logits are computed at each image's original size."""

    def _sanitize_parameters(self, **kwargs):
        options = {name: kwargs.pop(name) for name in OPTION_NAMES if name in kwargs}
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        # One key per option: the pipeline merges call-time parameters over creation-time ones key by key.
        preprocess_params.update(options)
        forward_params.update(options)
        return preprocess_params, forward_params, postprocess_params

    def _inference_options(self, options: dict) -> InferenceOptions:
        return InferenceOptions(**options).with_input_size(processor_input_size(self.image_processor))

    def preprocess(self, image, subtask=None, timeout=None, **options):
        transform = eval_transform_for(self.image_processor, self._inference_options(options))
        num_channels = getattr(self.model.config, "num_channels", None)
        if is_band_input(num_channels):  # a file path, a (H, W, C) array or a (C, H, W) tensor, read by band
            image = read_bands(image, num_channels)
            target_size = tuple(image.shape[-2:])
        elif isinstance(image, (str, Image.Image)) and is_high_bit_depth(image):  # a 16-bit or float file or image
            image = read_rgb_bands(image)
            target_size = tuple(image.shape[-2:])
        else:
            image = load_rgb(load_image(image, timeout=timeout))
            target_size = (image.height, image.width)
        pixel_values = transform(image, None)[0][None]
        return {"pixel_values": pixel_values.to(self.dtype), "target_size": target_size}

    def _forward(self, model_inputs, **options):
        sizes = [model_inputs["target_size"]]
        logits = logits_at_sizes(self.model, model_inputs["pixel_values"], sizes, self._inference_options(options))
        return {"segmentation": logits[0].argmax(0)}

    def postprocess(self, model_outputs, subtask=None, **kwargs):
        if subtask not in (None, "semantic"):
            raise ValueError(f"SegmentationPipeline does semantic segmentation only, not subtask={subtask!r}")
        segmentation = model_outputs["segmentation"].numpy()
        annotation = []
        for label in np.unique(segmentation):
            mask = Image.fromarray(((segmentation == label) * 255).astype(np.uint8), mode="L")
            annotation.append({"score": None, "label": self.model.config.id2label[int(label)], "mask": mask})
        return annotation


def segmentation_pipeline(model, **options) -> SegmentationPipeline:
    """`pipeline("image-segmentation", model=model, pipeline_class=SegmentationPipeline, **options)`."""
    return pipeline("image-segmentation", model=model, pipeline_class=SegmentationPipeline, **options)
