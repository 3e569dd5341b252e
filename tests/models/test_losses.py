"""Losses: exact values against torch's reference, class weights by hand, auxiliary heads, overfitting one batch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from hfseg.errors import HfsegError
from hfseg.models.losses import (
    SegmentationLoss,
    build_loss,
    class_weights_from_counts,
    count_label_pixels,
    dice_loss,
)
from hfseg.training.trainer import SegTrainer


def _batch(seed=0, num_labels=3, size=16, batch=2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_labels, size // 4, size // 4, generator=generator)
    labels = torch.randint(0, num_labels, (batch, size, size), generator=generator)
    labels[:, :3] = 255
    return logits, labels


def test_counts_and_weights_by_hand():
    masks = [np.array([[0, 1, 255], [1, 1, 7]]), np.array([[2, 2, 2, 2]])]
    assert count_label_pixels(masks, 4).tolist() == [1, 3, 4, 0]  # 255 and out-of-range 7 not counted
    counts = [10, 30, 60, 0]
    assert class_weights_from_counts(counts, "median_frequency") == pytest.approx([3.0, 1.0, 0.5, 0.0])
    assert class_weights_from_counts(counts, "inverse") == pytest.approx([2.0, 2 / 3, 1 / 3, 0.0])
    with pytest.raises(HfsegError, match="no labelled pixels"):
        class_weights_from_counts([0, 0], "inverse")


def test_ce_matches_torch_at_label_size_and_ignores_ignore_pixels():
    logits, labels = _batch()
    upsampled = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    expected = F.cross_entropy(upsampled, labels, ignore_index=255)
    assert SegmentationLoss("ce")(logits, labels) == pytest.approx(float(expected), rel=1e-5)
    weights = [0.2, 1.0, 3.0]
    expected = F.cross_entropy(upsampled, labels, weight=torch.tensor(weights), ignore_index=255, label_smoothing=0.1)
    got = SegmentationLoss("ce", class_weights=weights, label_smoothing=0.1)(logits, labels)
    assert got == pytest.approx(float(expected), rel=1e-5)
    # Changing the labels only where they are ignored changes nothing; a fully ignored batch gives 0 with a graph.
    assert float(SegmentationLoss("ce")(logits, torch.where(labels == 255, 255, labels))) == pytest.approx(
        float(SegmentationLoss("ce")(logits, labels))
    )
    empty = SegmentationLoss("ce_dice")(logits.requires_grad_(), torch.full_like(labels, 255))
    assert float(empty) == 0.0 and empty.requires_grad


def test_dice_perfect_is_zero_and_ce_dice_adds_up():
    labels = torch.randint(0, 3, (2, 8, 8))
    perfect = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 50
    assert float(dice_loss(perfect, labels)) == pytest.approx(0.0, abs=1e-4)
    logits, labels = _batch(1)
    ce, dice = SegmentationLoss("ce")(logits, labels), SegmentationLoss("dice")(logits, labels)
    assert 0 < float(dice) < 1
    assert float(SegmentationLoss("ce_dice", dice_weight=0.5)(logits, labels)) == pytest.approx(
        float(ce + 0.5 * dice), rel=1e-5
    )


def test_auxiliary_weight_and_errors():
    logits, labels = _batch(2)
    auxiliary, _ = _batch(3)
    loss = SegmentationLoss("ce", aux_loss_weight=0.4)
    assert float(loss(logits, labels, auxiliary)) == pytest.approx(
        float(loss(logits, labels) + 0.4 * loss(auxiliary, labels)), rel=1e-5
    )
    with pytest.raises(HfsegError, match="class_weights has 2 values"):
        SegmentationLoss("ce", class_weights=[1.0, 2.0])(logits, labels)
    with pytest.raises(HfsegError, match="unknown loss 'hinge'"):
        SegmentationLoss("ce:1,hinge:0.5")


class _Args:
    loss, class_weights, class_weighting = "ce", None, "none"
    label_smoothing, dice_weight, aux_loss_weight = 0.0, 1.0, None
    focal_gamma, focal_alpha, tversky_alpha, tversky_beta = 2.0, None, 0.3, 0.7
    ohem_thresh, ohem_min_kept, pos_weight = 0.7, 100000, None


def test_build_loss_counts_pixels_and_reads_aux_weight_from_config():
    model = tiny_model("upernet", num_labels=3)
    args = _Args()
    args.class_weighting = "median_frequency"
    masks = [np.array([[0] * 6 + [1] * 3 + [2]])]
    loss = build_loss(args, model.config, 255, iter(masks))
    assert loss.class_weights.tolist() == pytest.approx([0.5, 1.0, 3.0])
    assert loss.aux_loss_weight == model.config.auxiliary_loss_weight
    args.class_weights = [1.0, 2.0]
    with pytest.raises(HfsegError, match="2 values but there are 3 classes"):
        build_loss(args, model.config, 255)


@pytest.mark.parametrize("model_type", ["segformer", "upernet"])
def test_trainer_default_loss_equals_models_own_loss(model_type, tmp_path):
    """Our CE (with UperNet's auxiliary head caught by the hook) reproduces what the model computes itself."""
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = tiny_model(model_type, num_labels=3).eval()
    trainer = SegTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True),
        loss_fn=build_loss(_Args(), model.config),
    )
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 32, 32))
    labels[0, :4] = 255
    inputs = {"pixel_values": pixel_values, "labels": labels, "label_sizes": torch.tensor([[32, 32]] * 2)}
    ours = trainer.compute_loss(model, inputs)
    with torch.no_grad():
        reference = model(pixel_values=pixel_values, labels=labels).loss
    assert float(ours) == pytest.approx(float(reference), rel=1e-4)
    if model_type == "upernet":
        trainer.loss_fn.aux_loss_weight = 0.0
        assert float(trainer.compute_loss(model, inputs)) < float(ours)


@pytest.mark.parametrize(
    "loss_kwargs",
    [  # ce and ce_dice (which contains dice) run by default; the other two are slow tests
        {"loss": "ce"},
        pytest.param(
            {"loss": "ce", "class_weights": [0.5, 1.0, 2.0], "label_smoothing": 0.05}, marks=pytest.mark.slow
        ),
        pytest.param({"loss": "dice"}, marks=pytest.mark.slow),
        {"loss": "ce_dice"},
    ],
    ids=["ce", "ce_weighted_smoothed", "dice", "ce_dice"],
)
def test_tiny_model_overfits_one_batch(loss_kwargs):
    torch.manual_seed(0)
    model = tiny_model("segformer", num_labels=3)
    loss_fn = SegmentationLoss(**loss_kwargs)
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, 8:24, 4:16] = 1
    labels[:, 4:12, 18:30] = 2
    labels[:, :2] = 255
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = loss_fn(model(pixel_values=pixel_values).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses[::5]


def test_training_masks_feed_class_weighting(tiny_synthetic):
    from hfseg.data.labels import LabelSpec
    from hfseg.data.synthetic import SYNTHETIC_ID2LABEL
    from hfseg.models.losses import training_masks

    spec = LabelSpec(SYNTHETIC_ID2LABEL)
    masks = list(training_masks(tiny_synthetic["train"], "annotation", spec, limit=3))
    assert len(masks) == 3 and all(mask.dtype == np.int64 and mask.max() < 5 for mask in masks)
    counts = count_label_pixels(masks, 5)
    assert counts.sum() == sum(mask.size for mask in masks)
    weights = class_weights_from_counts(counts, "median_frequency")
    assert weights[0] < 1.0  # background is the most frequent class, so it weighs least


def test_training_masks_decode_colour_masks_through_the_palette():
    """Class weighting counts colour-coded masks (`--layout colormask`) through the palette, as training reads them."""
    from PIL import Image

    from hfseg.data.labels import LabelSpec
    from hfseg.models.losses import training_masks

    colours = np.zeros((4, 6, 3), dtype=np.uint8)
    colours[:, 4:] = (255, 0, 0)
    spec = LabelSpec({0: "ground", 1: "roof"}, palette={0: (0, 0, 0), 1: (255, 0, 0)})
    (mask,) = training_masks([{"annotation": Image.fromarray(colours)}], "annotation", spec, limit=5)
    np.testing.assert_array_equal(count_label_pixels([mask], 2), [16, 8])
