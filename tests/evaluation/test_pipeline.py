"""The inference modes behind `pipeline("image-segmentation")`, and the plain pipeline on the same model."""

import numpy as np
import pytest
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

from hfseg.data.synthetic import SYNTHETIC_ID2LABEL, make_synthetic_dataset
from hfseg.errors import HfsegError
from hfseg.evaluation.inference import InferenceOptions, eval_transform_for, predict_masks
from hfseg.evaluation.pipeline import SegmentationPipeline, segmentation_pipeline

NAMES = list(SYNTHETIC_ID2LABEL.values())


@pytest.fixture(scope="module")
def image():
    return make_synthetic_dataset(train_size=1, eval_size=1, seed=7, min_size=56, max_size=90)["validation"][0][
        "image"
    ].convert("RGB")


def segments_to_mask(segments, size) -> np.ndarray:
    mask = np.full((size[1], size[0]), -1)
    coverage = np.zeros_like(mask)
    for segment in segments:
        assert segment["mask"].size == size
        covered = np.asarray(segment["mask"]) > 0
        mask[covered] = NAMES.index(segment["label"])
        coverage += covered
    assert (coverage == 1).all(), "segments tile the image exactly once"
    return mask


def expected_mask(model_dir, image, options: InferenceOptions) -> np.ndarray:
    model = AutoModelForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    options = options.with_input_size(64)
    return predict_masks(model, [image], eval_transform_for(processor, options), options=options)[0].numpy()


def test_pipeline_modes_equal_hfseg_inference(saved_tiny_model, image):
    segmenter = pipeline("image-segmentation", model=str(saved_tiny_model), pipeline_class=SegmentationPipeline)
    assert isinstance(segmenter, SegmentationPipeline)
    whole = segments_to_mask(segmenter(image), image.size)
    assert np.array_equal(whole, expected_mask(saved_tiny_model, image, InferenceOptions()))
    options = {"mode": "slide", "crop_size": 48, "stride": 24, "flip": True, "scales": [1.0, 1.25]}
    slide = segments_to_mask(segmenter(image, **options), image.size)
    assert np.array_equal(slide, expected_mask(saved_tiny_model, image, InferenceOptions(**options)))


def test_options_given_at_creation_apply_and_calls_override_them(saved_tiny_model, image):
    segmenter = segmentation_pipeline(str(saved_tiny_model), mode="slide", crop_size=48, stride=24)
    slide = InferenceOptions(mode="slide", crop_size=48, stride=24)
    assert np.array_equal(
        segments_to_mask(segmenter(image), image.size), expected_mask(saved_tiny_model, image, slide)
    )
    flipped = segments_to_mask(segmenter(image, flip=True), image.size)  # slide kept, flip added
    expected = expected_mask(
        saved_tiny_model, image, InferenceOptions(mode="slide", crop_size=48, stride=24, flip=True)
    )
    assert np.array_equal(flipped, expected)
    whole = segments_to_mask(segmenter(image, mode="whole"), image.size)
    assert np.array_equal(whole, expected_mask(saved_tiny_model, image, InferenceOptions()))
    with pytest.raises(HfsegError, match="--eval_stride 64 is larger than --eval_crop_size 48"):
        segmenter(image, stride=64)


def test_plain_pipeline_keeps_working_and_agrees_in_whole_mode(saved_tiny_model, image):
    plain = segments_to_mask(pipeline("image-segmentation", model=str(saved_tiny_model))(image), image.size)
    ours = segments_to_mask(segmentation_pipeline(str(saved_tiny_model))(image), image.size)
    # The processor's PIL resize and hfseg's torchvision resize differ by rounding only.
    assert (plain == ours).mean() > 0.99


def test_both_pipelines_run_on_a_saved_upernet(tmp_path, image):
    from conftest import tiny_model

    from hfseg.config import ModelArguments
    from hfseg.models.build import build_image_processor

    model = tiny_model("upernet")
    model.config.id2label = dict(SYNTHETIC_ID2LABEL)
    model.config.label2id = {name: index for index, name in SYNTHETIC_ID2LABEL.items()}
    model.save_pretrained(tmp_path)
    build_image_processor(ModelArguments(model_type="upernet", image_size=64)).save_pretrained(tmp_path)
    plain = segments_to_mask(pipeline("image-segmentation", model=str(tmp_path))(image), image.size)
    ours = segments_to_mask(segmentation_pipeline(str(tmp_path), mode="slide", crop_size=48)(image), image.size)
    assert plain.min() >= 0 and ours.min() >= 0


def test_pipeline_reads_16bit_images_as_training_does(saved_tiny_model, tmp_path):
    import torch
    from PIL import Image

    gray = np.random.default_rng(9).integers(0, 65536, (50, 70), dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(gray).save(path)
    training = torch.from_numpy(np.stack([gray] * 3))  # (3, 50, 70) uint16: scaled by 65535 at normalisation
    processor = AutoImageProcessor.from_pretrained(saved_tiny_model)
    expected_values = eval_transform_for(processor, InferenceOptions().with_input_size(64))(training, None)[0]
    segmenter = segmentation_pipeline(str(saved_tiny_model))
    for given in (str(path), Image.open(path)):  # a file path, and a PIL image of mode I;16
        assert torch.allclose(segmenter.preprocess(given)["pixel_values"][0], expected_values, atol=1e-6)
        mask = segments_to_mask(segmenter(given), (70, 50))
        assert np.array_equal(mask, expected_mask(saved_tiny_model, training, InferenceOptions()))
