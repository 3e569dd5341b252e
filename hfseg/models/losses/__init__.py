"""Training losses, one module per family: pixel-wise (ce, ohem, focal, bce), region (dice, tversky, jaccard), Lovász,
class weights, and the weighted combination the Trainer calls (`build_loss`, `SegmentationLoss`)."""

from hfseg.models.losses.class_weights import (
    CLASS_WEIGHTINGS,
    check_class_weights,
    class_weights_from_counts,
    count_label_pixels,
    training_masks,
)
from hfseg.models.losses.combined import (
    BINARY_LOSSES,
    LOSSES,
    MULTICLASS_LOSSES,
    TASKS,
    SegmentationLoss,
    build_loss,
    parse_loss,
)
from hfseg.models.losses.lovasz import lovasz_hinge, lovasz_softmax
from hfseg.models.losses.pixelwise import binary_cross_entropy, cross_entropy, focal_loss, ohem_cross_entropy
from hfseg.models.losses.region import dice_loss, jaccard_loss, tversky_loss

__all__ = [
    "BINARY_LOSSES",
    "CLASS_WEIGHTINGS",
    "LOSSES",
    "MULTICLASS_LOSSES",
    "TASKS",
    "SegmentationLoss",
    "binary_cross_entropy",
    "build_loss",
    "check_class_weights",
    "class_weights_from_counts",
    "count_label_pixels",
    "cross_entropy",
    "dice_loss",
    "focal_loss",
    "jaccard_loss",
    "lovasz_hinge",
    "lovasz_softmax",
    "ohem_cross_entropy",
    "parse_loss",
    "training_masks",
    "tversky_loss",
]
