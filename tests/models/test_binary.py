"""Binary masks: one sigmoid logit in training, saved as a two-class head that the plain pipeline thresholds."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_SEGFORMER
from PIL import Image

from hfseg.config import ModelArguments
from hfseg.errors import HfsegError
from hfseg.evaluation.metrics import StreamingSegmentationMetric, foreground_metrics
from hfseg.models.binary import binary_logits_as_two_classes, export_binary_head, resolve_task
from hfseg.models.build import build_model
from hfseg.models.losses import build_loss

ID2LABEL = {0: "background", 1: "lesion"}


def _binary_model():
    torch.manual_seed(0)
    args = ModelArguments(model_type="segformer", config_overrides=json.dumps(TINY_SEGFORMER), task="binary")
    return build_model(args, ID2LABEL).eval()


def test_binary_model_has_one_logit_and_gets_a_bce_loss():
    model = _binary_model()
    assert model.config.num_labels == 1 and model.config.id2label == {0: "lesion"}
    from test_losses import _Args

    args = _Args()
    args.loss = "bce,dice"
    loss = build_loss(args, model.config)
    assert loss.task == "binary" and loss.terms == [("bce", 1.0), ("dice", 1.0)]
    with pytest.raises(HfsegError, match="--task binary needs two classes .* the labels have 3"):
        build_model(
            ModelArguments(model_type="segformer", config_overrides=json.dumps(TINY_SEGFORMER), task="binary"),
            {0: "a", 1: "b", 2: "c"},
        )


def test_a_binary_model_without_a_loss_trains_with_bce_and_a_multiclass_one_with_ce():
    from test_losses import _Args

    args = _Args()
    args.loss = None  # the flag's default: the run names no loss
    assert build_loss(args, _binary_model().config).terms == [("bce", 1.0)]
    multiclass = build_model(
        ModelArguments(model_type="segformer", config_overrides=json.dumps(TINY_SEGFORMER)), ID2LABEL
    )
    assert build_loss(args, multiclass.config).terms == [("ce", 1.0)]


@pytest.mark.parametrize(
    ("id2label", "mask_classification", "loss", "expected"),
    [
        (ID2LABEL, False, None, "binary"),
        (ID2LABEL, False, "focal:1,dice:0.5", "binary"),
        (ID2LABEL, False, "ce", "multiclass"),  # a softmax loss asks for the two-channel head
        (ID2LABEL, False, "ce_dice", "multiclass"),
        (ID2LABEL, True, None, "multiclass"),  # Mask2Former & co. have no one-logit head
        ({0: "a", 1: "b", 2: "c"}, False, None, "multiclass"),
        ({0: "background"}, False, None, "multiclass"),
    ],
)
def test_task_auto_is_binary_for_two_classes_a_one_logit_head_can_train(id2label, mask_classification, loss, expected):
    assert resolve_task("auto", id2label, mask_classification, loss) == expected
    assert resolve_task("multiclass", ID2LABEL, False, None) == "multiclass"  # an explicit task is kept


@pytest.mark.parametrize("quantile", [0.5, 0.3, 0.8])
def test_exported_head_argmax_is_the_thresholded_sigmoid(quantile):
    model = _binary_model()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        foreground_logit = model(pixel_values=pixel_values).logits  # (2, 1, 8, 8)
        # A random-init model's probabilities sit in a narrow band: thresholds taken inside it, so both classes occur.
        threshold = float(torch.sigmoid(foreground_logit).quantile(quantile))
        export_binary_head(model, ID2LABEL, threshold)
        two_class = model(pixel_values=pixel_values).logits
    assert two_class.shape[1] == 2 and model.config.num_labels == 2 and model.config.id2label == ID2LABEL
    assert model.config.binary_threshold == threshold
    torch.testing.assert_close(two_class[:, 1], foreground_logit[:, 0])
    torch.testing.assert_close(
        two_class[:, 0], torch.full_like(two_class[:, 0], math.log(threshold / (1 - threshold)))
    )
    expected = torch.sigmoid(foreground_logit[:, 0]) > threshold
    assert torch.equal(two_class.argmax(1) == 1, expected)
    assert torch.equal(binary_logits_as_two_classes(foreground_logit, threshold).argmax(1) == 1, expected)
    assert 0 < int(expected.sum()) < expected.numel()  # both classes occur, so the check can fail


def test_plain_pipeline_serves_the_saved_binary_model_with_both_class_names(tmp_path):
    from transformers import SegformerImageProcessor, pipeline

    model = _binary_model()
    image = Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8))
    processor = SegformerImageProcessor(size={"height": 32, "width": 32}, do_reduce_labels=False)
    inputs = processor(image, return_tensors="pt")
    with torch.no_grad():
        foreground_logit = model(**inputs).logits
    upsampled = torch.nn.functional.interpolate(foreground_logit, size=(40, 48), mode="bilinear", align_corners=False)
    expected = (torch.sigmoid(upsampled[0, 0]) > 0.5).numpy()
    export_binary_head(model, ID2LABEL, 0.5)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    segments = pipeline("image-segmentation", model=str(tmp_path))(image)
    masks = {segment["label"]: np.asarray(segment["mask"]) > 0 for segment in segments}
    assert set(masks) == {"background", "lesion"}
    assert np.array_equal(masks["background"], ~masks["lesion"])
    # The same mask, up to float rounding of logits within ~1e-7 of the threshold (1 pixel in 1920 here).
    assert (masks["lesion"] == expected).mean() > 0.999 and 0.1 < expected.mean() < 0.9


def test_foreground_metrics_from_the_two_class_confusion_matrix():
    # Hand-worked: 10 labelled pixels, 4 foreground; predicted foreground on 3 of them and on 1 background pixel.
    labels = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 255]])
    predictions = torch.tensor([[1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1]])
    metric = StreamingSegmentationMetric(num_labels=2)
    metric.update(predictions, labels)
    result = foreground_metrics(metric.compute())
    assert result == pytest.approx(
        {"foreground_iou": 3 / 5, "foreground_dice": 6 / 8, "foreground_precision": 3 / 4, "foreground_recall": 3 / 4}
    )
