"""Every loss against a reference: smp's implementations (values and gradients to 1e-5 on random logits with ignored
pixels), mmsegmentation's OHEM rule worked by hand, and a tiny SegFormer training two steps with each loss."""

import pytest
import torch
import torch.nn.functional as F

from hfseg.errors import HfsegError
from hfseg.models.losses import (
    SegmentationLoss,
    binary_cross_entropy,
    focal_loss,
    jaccard_loss,
    lovasz_hinge,
    lovasz_softmax,
    ohem_cross_entropy,
    parse_loss,
    tversky_loss,
)

smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")

IGNORE = 255


def _multiclass(seed, num_labels=4, size=12, batch=2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_labels, size, size, generator=generator) * 2
    labels = torch.randint(0, num_labels, (batch, size, size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = IGNORE
    labels[labels == num_labels - 1] = 0  # the last class is absent from the labels
    return logits, labels


def _binary(seed, size=12, batch=2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 1, size, size, generator=generator) * 2
    labels = torch.randint(0, 2, (batch, size, size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = IGNORE
    return logits, labels


def _value_and_grad(loss_fn, logits, labels):
    logits = logits.clone().requires_grad_()
    value = loss_fn(logits, labels)
    (gradient,) = torch.autograd.grad(value, logits)
    return value.item(), gradient


def _assert_same(ours, reference, logits, labels):
    value, gradient = _value_and_grad(ours, logits, labels)
    expected_value, expected_gradient = _value_and_grad(reference, logits, labels)
    assert value == pytest.approx(expected_value, abs=1e-5)
    torch.testing.assert_close(gradient, expected_gradient, atol=1e-5, rtol=1e-5)
    # Ignored pixels get no gradient at all.
    assert float(gradient.abs().sum(dim=1)[labels == IGNORE].max()) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    ("name", "ours", "reference"),
    [
        (
            "focal",
            lambda x, y: focal_loss(x, y, IGNORE, gamma=2.0),
            lambda: smp_losses.FocalLoss("multiclass", gamma=2.0, ignore_index=IGNORE),
        ),
        (
            "focal_alpha_weights",
            lambda x, y: focal_loss(x, y, IGNORE, 1.5, 0.25, torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=x.dtype)),
            lambda: smp_losses.FocalLoss(
                "multiclass", alpha=0.25, gamma=1.5, ignore_index=IGNORE, class_weights=[1.0, 2.0, 0.5, 3.0]
            ),
        ),
        (
            "lovasz",
            lambda x, y: lovasz_softmax(x, y, IGNORE),
            lambda: smp_losses.LovaszLoss("multiclass", ignore_index=IGNORE),
        ),
        (
            "tversky",
            lambda x, y: tversky_loss(x, y, IGNORE, alpha=0.3, beta=0.7),
            lambda: smp_losses.TverskyLoss("multiclass", alpha=0.3, beta=0.7, ignore_index=IGNORE),
        ),
        (
            "jaccard",
            lambda x, y: jaccard_loss(x, y, IGNORE),
            lambda: smp_losses.JaccardLoss("multiclass", ignore_index=IGNORE),
        ),
    ],
)
def test_multiclass_losses_match_smp(name, ours, reference, seed):
    logits, labels = _multiclass(seed)
    _assert_same(ours, reference(), logits, labels)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    ("name", "ours", "reference"),
    [
        (
            "focal",
            lambda x, y: focal_loss(x, y, IGNORE, gamma=2.0, alpha=0.25),
            lambda: smp_losses.FocalLoss("binary", alpha=0.25, gamma=2.0, ignore_index=IGNORE),
        ),
        (
            "lovasz_hinge",
            lambda x, y: lovasz_hinge(x, y, IGNORE),
            lambda: smp_losses.LovaszLoss("binary", ignore_index=IGNORE),
        ),
        (
            "tversky",
            lambda x, y: tversky_loss(x, y, IGNORE, alpha=0.3, beta=0.7),
            lambda: smp_losses.TverskyLoss("binary", alpha=0.3, beta=0.7, ignore_index=IGNORE),
        ),
        (
            "jaccard",
            lambda x, y: jaccard_loss(x, y, IGNORE),
            lambda: smp_losses.JaccardLoss("binary", ignore_index=IGNORE),
        ),
        (
            "dice",
            lambda x, y: tversky_loss(x, y, IGNORE, alpha=0.5, beta=0.5),
            lambda: smp_losses.DiceLoss("binary", ignore_index=IGNORE),
        ),
    ],
)
def test_binary_losses_match_smp(name, ours, reference, seed):
    logits, labels = _binary(seed)
    _assert_same(ours, reference(), logits, labels)


def test_bce_is_torchs_bce_over_labelled_pixels():
    logits, labels = _binary(3)
    valid = labels != IGNORE
    expected = F.binary_cross_entropy_with_logits(logits[:, 0][valid], labels[valid].float())
    assert float(binary_cross_entropy(logits, labels, IGNORE)) == pytest.approx(float(expected), abs=1e-7)
    weighted = F.binary_cross_entropy_with_logits(
        logits[:, 0][valid], labels[valid].double(), pos_weight=torch.tensor([3.0])
    )
    assert float(binary_cross_entropy(logits, labels, IGNORE, pos_weight=3.0)) == pytest.approx(float(weighted))


def test_ohem_keeps_pixels_by_mmsegs_rule_worked_by_hand():
    # One image, 6 pixels, 2 classes; logit of the true class log(p/(1-p)) against 0 gives true-class prob p.
    probs = torch.tensor([0.9, 0.2, 0.6, 0.75, 0.5, 0.3], dtype=torch.float64)
    labels = torch.tensor([[[0, 1, 0, 1, 0, IGNORE]]])
    true_logit = torch.log(probs / (1 - probs)).reshape(1, 1, 6)
    logits = torch.zeros(1, 2, 1, 6, dtype=torch.float64)
    logits[0, 0] = torch.where(labels[0] == 0, true_logit, torch.zeros_like(true_logit))[0]
    logits[0, 1] = torch.where(labels[0] == 1, true_logit, torch.zeros_like(true_logit))[0]
    nll = -torch.log(probs)
    # Labelled probs sorted: 0.2 0.5 0.6 0.75 0.9. min_kept=1: p_k = 0.5 < thresh 0.7, keep p < 0.7 = {.2, .5, .6}.
    expected = float(nll[[1, 4, 2]].mean())
    assert float(ohem_cross_entropy(logits, labels, IGNORE, thresh=0.7, min_kept=1)) == pytest.approx(expected)
    # min_kept=3 -> p_k = 0.75 > 0.7: keep p < 0.75 = {0.2, 0.5, 0.6} (strictly below, as mmseg).
    assert float(ohem_cross_entropy(logits, labels, IGNORE, thresh=0.7, min_kept=3)) == pytest.approx(expected)
    # min_kept=4 -> p_k = 0.9: keep {0.2, 0.5, 0.6, 0.75}; the ignored pixel (0.3) never counts.
    expected_four = float(nll[[1, 4, 2, 3]].mean())
    assert float(ohem_cross_entropy(logits, labels, IGNORE, thresh=0.7, min_kept=4)) == pytest.approx(expected_four)
    # No thresh: the min_kept pixels of highest loss.
    assert float(ohem_cross_entropy(logits, labels, IGNORE, thresh=None, min_kept=2)) == pytest.approx(
        float(nll[[1, 4]].mean())
    )
    # Class weights: a weighted mean over the kept pixels (weights 1 for class 0, 3 for class 1).
    weights = torch.tensor([1.0, 3.0], dtype=torch.float64)
    weighted = float((nll[1] * 3 + nll[4] + nll[2]) / 5)
    got = ohem_cross_entropy(logits, labels, IGNORE, thresh=0.7, min_kept=1, class_weights=weights)
    assert float(got) == pytest.approx(weighted)
    # The gradient flows through the kept pixels only.
    logits.requires_grad_()
    ohem_cross_entropy(logits, labels, IGNORE, thresh=0.7, min_kept=1).backward()
    touched = logits.grad.abs().sum(dim=1)[0, 0] > 0
    assert touched.tolist() == [False, True, True, False, True, False]


def test_combined_terms_add_up_and_old_flags_still_mean_the_same():
    logits, labels = _multiclass(4)
    logits = logits.float()
    ce = SegmentationLoss("ce")(logits, labels)
    lovasz = SegmentationLoss("lovasz")(logits, labels)
    assert float(SegmentationLoss("ce:1,lovasz:0.5")(logits, labels)) == pytest.approx(float(ce + 0.5 * lovasz))
    assert parse_loss("ce_dice", dice_weight=0.3) == [("ce", 1.0), ("dice", 0.3)]
    assert parse_loss("ce, focal:2") == [("ce", 1.0), ("focal", 2.0)]
    for bad, message in [
        ("ce:x", "weight 'x' of ce is not a number"),
        ("ce:-1", "weights must be >= 0"),
        ("ce,ce:2", "names a loss twice"),
        ("lovasz_softmax", "unknown loss 'lovasz_softmax'"),
    ]:
        with pytest.raises(HfsegError, match=message):
            SegmentationLoss(bad)


def test_task_and_loss_must_agree_and_one_channel_softmax_is_refused():
    multiclass, labels = _multiclass(5)
    binary, binary_labels = _binary(5)
    with pytest.raises(HfsegError, match="--loss bce does not apply to --task multiclass"):
        SegmentationLoss("bce")
    with pytest.raises(HfsegError, match="--loss ce does not apply to --task binary"):
        SegmentationLoss("ce", task="binary")
    with pytest.raises(HfsegError, match="one output channel"):  # softmax over one channel: no signal at all
        SegmentationLoss("ce")(binary, binary_labels)
    with pytest.raises(HfsegError, match="needs a model with one output channel"):
        SegmentationLoss("bce", task="binary")(multiclass, labels)
    # 0/255 masks without a label map would give BCE targets of 255 and negative losses: refused.
    with pytest.raises(HfsegError, match=r"mask values \[0, 1, 7\]"):
        bad_labels = binary_labels.clone()
        bad_labels[0, 0, :3] = torch.tensor([0, 1, 7])
        SegmentationLoss("bce", task="binary")(binary, bad_labels)
    # Binary losses on 0/1 labels are never negative.
    for name in ("bce", "focal", "dice", "tversky", "jaccard", "lovasz"):
        assert float(SegmentationLoss(name, task="binary")(binary, binary_labels)) >= 0.0


@pytest.mark.parametrize(
    ("loss", "num_labels"),
    [
        ("ohem", 3),
        ("focal", 3),
        ("tversky", 3),
        ("jaccard", 3),
        ("lovasz", 3),
        ("ce:1,lovasz:0.5", 3),
        ("bce", 1),
        ("bce,dice", 1),
        ("lovasz", 1),
        ("focal:1,tversky:1,jaccard:1", 1),
    ],
)
def test_tiny_segformer_trains_two_steps_with_each_loss(loss, num_labels):
    from conftest import tiny_model

    torch.manual_seed(0)
    model = tiny_model("segformer", num_labels=num_labels)
    loss_fn = SegmentationLoss(loss, task="binary" if num_labels == 1 else "multiclass", ohem_min_kept=64)
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, 8:24, 4:16] = 1
    labels[:, 4:12, 18:30] = num_labels - 1 if num_labels > 1 else 1
    labels[:, :2] = IGNORE
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        value = loss_fn(model(pixel_values=pixel_values).logits, labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        assert torch.isfinite(value) and value.item() >= 0.0
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
