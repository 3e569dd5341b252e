"""Mask-classification models (Mask2Former, MaskFormer, OneFormer, EoMT) evaluated like the other families: per-pixel
class scores equal transformers' `post_process_semantic_segmentation`, slide and TTA act on those scores, saved runs
load in both pipelines and in `hfseg evaluate` / `hfseg predict`."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_mask_classification_model
from PIL import Image
from transformers import (
    EomtImageProcessor,
    Mask2FormerImageProcessor,
    MaskFormerImageProcessor,
    OneFormerImageProcessor,
    pipeline,
)

from hfseg.data.synthetic import SYNTHETIC_ID2LABEL, make_synthetic_dataset
from hfseg.evaluation.inference import (
    SCORES_AT_INPUT_SIZE,
    InferenceOptions,
    eval_transform_for,
    forward_logits,
    logits_at_sizes,
    mask_class_scores,
    predict_masks,
    upsample_logits,
)
from hfseg.evaluation.pipeline import segmentation_pipeline
from hfseg.hub.push import files_to_push
from hfseg.models.build import is_mask_classification, load_for_inference
from hfseg.models.mask_classification import with_task_inputs

POST_PROCESSORS = {
    "mask2former": Mask2FormerImageProcessor(),
    "maskformer": MaskFormerImageProcessor(),
    "oneformer": OneFormerImageProcessor(),
    # EoMT's post-processing upsamples the masks to the processor's size (the input size) before the sigmoid.
    "eomt": EomtImageProcessor(size={"shortest_edge": 64, "longest_edge": None}),
}


@pytest.fixture(scope="module")
def models(tiny_clip_tokenizer):
    return {
        model_type: tiny_mask_classification_model(model_type, tokenizer_dir=tiny_clip_tokenizer).eval()
        for model_type in POST_PROCESSORS
    }


@pytest.mark.parametrize(
    ("model_type", "input_size", "batch_size"),
    # transformers' Mask2Former post-processing upsamples the masks to a fixed 384 x 384 (its input size) before the
    # sigmoid; hfseg upsamples them to the input size, so the two agree on 384-pixel inputs.
    [("mask2former", 384, 1), ("maskformer", 64, 2), ("oneformer", 64, 2), ("eomt", 64, 2)],
)
@torch.no_grad()
def test_scores_and_map_equal_transformers_post_processing(models, model_type, input_size, batch_size):
    model = models[model_type]
    torch.manual_seed(1)
    pixel_values = torch.randn(batch_size, 3, input_size, input_size)
    sizes = [(input_size + 13, int(input_size * 1.4)), (input_size // 2 + 3, input_size // 2 - 5)][:batch_size]
    ours = logits_at_sizes(model, pixel_values, sizes)
    outputs = model(**with_task_inputs(model, {"pixel_values": pixel_values}))
    reference = POST_PROCESSORS[model_type].post_process_semantic_segmentation(
        outputs, target_sizes=sizes, return_segmentation_scores=True
    )
    at_mask_size = mask_class_scores(outputs.class_queries_logits, outputs.masks_queries_logits)
    # OneFormer's post-processing upsamples with torchvision's resize, whose antialiased kernel rounds differently
    # from the bilinear interpolation of the others (1.4e-6 on scores up to 5); at mask resolution they are equal.
    atol = 1e-5 if model_type == "oneformer" else 1e-6
    if model_type == "oneformer":
        unresized = POST_PROCESSORS[model_type].post_process_semantic_segmentation(
            outputs, return_segmentation_scores=True
        )
        at_mask_resolution = forward_logits(model, pixel_values)
        for index, expected in enumerate(unresized):
            assert torch.equal(at_mask_resolution[index], expected.segmentation_scores)
    for index, (scores, expected, size) in enumerate(zip(ours, reference, sizes, strict=True)):
        assert scores.shape == (model.config.num_labels, *size)
        torch.testing.assert_close(scores, expected.segmentation_scores, rtol=0, atol=atol)
        assert torch.equal(scores.argmax(0), expected.segmentation)
        assert len(scores.argmax(0).unique()) > 1, "a map of one class would make the comparison weak"
        # Mask2Former's sigmoid at mask resolution (1/4 of the input) would give other scores.
        sigmoid_at_mask_size = upsample_logits(at_mask_size[index : index + 1], size)[0]
        assert torch.equal(sigmoid_at_mask_size, scores) == (model_type not in SCORES_AT_INPUT_SIZE)


def test_mask_class_scores_by_hand():
    # One image, 2 queries, 2 classes + no-object, 1x2 masks.
    class_logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))  # softmax = these probabilities
    mask_logits = torch.tensor([[[[0.0, 100.0]], [[100.0, -100.0]]]])  # sigmoid: [0.5, 1] and [1, 0]
    scores = mask_class_scores(class_logits, mask_logits)
    expected = torch.tensor([[[[0.5 * 0.5 + 0.1 * 1, 0.5 * 1 + 0.1 * 0]], [[0.25 * 0.5 + 0.8 * 1, 0.25 * 1]]]])
    torch.testing.assert_close(scores, expected)


@torch.no_grad()
def test_slide_with_one_window_equals_whole_and_tta_averages_normalised_scores(models):
    model = models["mask2former"]
    torch.manual_seed(2)
    pixel_values = torch.randn(1, 3, 64, 64)
    sizes = [(70, 90)]
    whole = logits_at_sizes(model, pixel_values, sizes)[0]
    assert whole.min() >= 0 and whole.sum(0).min() > 0, "class scores, not logits"
    slide = logits_at_sizes(model, pixel_values, sizes, InferenceOptions(mode="slide", crop_size=64, stride=40))[0]
    assert torch.equal(slide, whole)
    # Two identical views: their mean is the whole view's scores normalised per pixel.
    repeated = logits_at_sizes(model, pixel_values, sizes, InferenceOptions(scales=(1.0, 1.0)))[0]
    torch.testing.assert_close(repeated, whole / whole.sum(0, keepdim=True))
    windows = logits_at_sizes(
        model, pixel_values, sizes, InferenceOptions(mode="slide", crop_size=48, stride=24, flip=True)
    )[0]
    torch.testing.assert_close(windows.sum(0), torch.ones(sizes[0]))


SAVED_MODELS = ("saved_tiny_mask2former", "saved_tiny_oneformer")


@pytest.mark.parametrize("saved", SAVED_MODELS)
def test_saved_model_works_in_both_pipelines(saved, request, tmp_path):
    saved_tiny_mask2former = request.getfixturevalue(saved)
    image = make_synthetic_dataset(train_size=1, eval_size=1, seed=7, min_size=56, max_size=90)["validation"][0]
    image = image["image"].convert("RGB")
    names = list(SYNTHETIC_ID2LABEL.values())
    model, processor = load_for_inference(str(saved_tiny_mask2former))
    assert is_mask_classification(model)
    expected = predict_masks(model, [image], eval_transform_for(processor, InferenceOptions()))[0].numpy()

    def as_map(segments):
        mask = np.full((image.height, image.width), -1)
        for segment in segments:
            assert segment["score"] is None and segment["mask"].size == image.size
            mask[np.asarray(segment["mask"]) > 0] = names.index(segment["label"])
        assert mask.min() >= 0, "segments cover the image"
        return mask

    ours = as_map(segmentation_pipeline(str(saved_tiny_mask2former))(image))
    assert np.array_equal(ours, expected)
    plain_pipeline = pipeline("image-segmentation", model=str(saved_tiny_mask2former))
    plain = as_map(plain_pipeline(image, subtask="semantic"))
    # The processor's PIL resize and hfseg's torchvision resize differ by rounding only.
    assert (plain == ours).mean() > 0.98
    # What `hfseg push` uploads is enough for the pipeline (OneFormer: its tokenizer files too).
    pushed = tmp_path / "pushed"
    pushed.mkdir()
    for name in files_to_push(saved_tiny_mask2former):
        shutil.copy(saved_tiny_mask2former / name, pushed / name)
    assert np.array_equal(as_map(pipeline("image-segmentation", model=str(pushed))(image, subtask="semantic")), plain)
    if model.config.model_type == "oneformer":  # the pipeline tokenizes the task itself, padded with the pad id
        task_seq_len = model.config.task_seq_len
        task_inputs = plain_pipeline.tokenizer("the task is semantic", padding="max_length", max_length=task_seq_len)
        assert task_inputs["input_ids"] == model.config.hfseg_task_inputs
        assert len(np.unique(expected)) > 1, "a map of one class would make the comparison weak"


@pytest.mark.parametrize("saved", SAVED_MODELS)
def test_evaluate_and_predict_a_saved_model(saved, request, tmp_path):
    saved_tiny_mask2former = request.getfixturevalue(saved)
    from hfseg.evaluation.evaluate_model import main as evaluate_main
    from hfseg.evaluation.metrics import StreamingSegmentationMetric
    from hfseg.evaluation.predict import main as predict_main

    rows = make_synthetic_dataset(train_size=2, eval_size=3, seed=3, min_size=40, max_size=72)
    rows.save_to_disk(str(tmp_path / "data"))
    evaluate_main(["--model", str(saved_tiny_mask2former), "--dataset_name", str(tmp_path / "data"), "--output_dir",
                   str(tmp_path / "eval"), "--per_device_eval_batch_size", "2", "--report_to", "none"])  # fmt: skip
    results = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    model, processor = load_for_inference(str(saved_tiny_mask2former))
    images = [row["image"].convert("RGB") for row in rows["validation"]]
    predictions = predict_masks(model, images, eval_transform_for(processor, InferenceOptions()), batch_size=2)
    metric = StreamingSegmentationMetric(num_labels=5)
    for prediction, row in zip(predictions, rows["validation"], strict=True):
        metric.update(prediction, torch.from_numpy(np.asarray(row["annotation"]).astype(np.int64)))
    assert metric.confusion.tolist() == results["confusion_matrix"]
    assert np.isfinite(results["eval_loss"]) if "eval_loss" in results else True

    (tmp_path / "images").mkdir()
    images[0].save(tmp_path / "images" / "first.png")
    predict_main(["--model", str(saved_tiny_mask2former), "--input", str(tmp_path / "images"),
                  "--output", str(tmp_path / "masks")])  # fmt: skip
    written = np.asarray(Image.open(tmp_path / "masks" / "first.png"))
    assert np.array_equal(written, predictions[0].numpy())


def test_oneformer_without_task_token_ids_is_named_before_any_forward_pass():
    from types import SimpleNamespace

    from hfseg.errors import HfsegError

    class TextConditioned(torch.nn.Module):
        """Stands in for a OneFormer loaded without hfseg: no task token ids in its config."""

        config = SimpleNamespace(model_type="oneformer", task_seq_len=24)

        def forward(self, pixel_values, task_inputs):
            raise AssertionError("never called")

    with pytest.raises(HfsegError, match=r"no hfseg_task_inputs .*the task is semantic.*load_for_inference"):
        forward_logits(TextConditioned(), torch.zeros(1, 3, 32, 32))


def test_a_oneformer_checkpoint_not_saved_by_hfseg_gets_its_task_inputs_from_its_tokenizer(
    saved_tiny_oneformer, tiny_clip_tokenizer, tmp_path
):
    """A Hub OneFormer checkpoint (config without hfseg's task token ids, tokenizer files beside it, is_training on)
    loads for inference with the task inputs `OneFormerProcessor` gives, and without its text encoder."""
    from transformers import AutoTokenizer, OneFormerProcessor

    model, _ = load_for_inference(str(saved_tiny_oneformer))
    config = json.loads((saved_tiny_oneformer / "config.json").read_text())
    del config["hfseg_task_inputs"]
    config["is_training"] = True
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    for file in saved_tiny_oneformer.iterdir():
        (checkpoint / file.name).write_bytes(file.read_bytes())
    (checkpoint / "config.json").write_text(json.dumps(config))
    loaded, processor = load_for_inference(str(checkpoint))
    assert loaded.config.is_training is False and loaded.model.text_mapper is None
    image = Image.new("RGB", (64, 64))
    reference = OneFormerProcessor(processor, AutoTokenizer.from_pretrained(tiny_clip_tokenizer), task_seq_length=24)
    expected = reference(images=[image], task_inputs=["semantic"], return_tensors="pt")["task_inputs"]
    assert loaded.config.hfseg_task_inputs == expected[0].tolist() == model.config.hfseg_task_inputs
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(loaded, pixel_values), forward_logits(model, pixel_values))
