"""Binary masks with one sigmoid logit: the model's label config, thresholded logits as two classes, and the saved
two-class head that `pipeline("image-segmentation")` argmaxes into the same thresholded mask."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from hfseg.config import BINARY_LOSSES, parse_loss
from hfseg.errors import HfsegError

logger = logging.getLogger(__name__)

#: Config attribute recording the threshold a saved binary model's two-class head was exported with.
THRESHOLD_ATTRIBUTE = "binary_threshold"


def check_binary_options(threshold: float, inference_options) -> None:
    """A threshold strictly between 0 and 1, and no TTA while the model still has one channel (the views'
    softmax over one channel is constant)."""
    if not 0.0 < threshold < 1.0:
        raise HfsegError(f"--threshold is {threshold}; give a foreground probability strictly between 0 and 1")
    if len(inference_options.scales) > 1 or inference_options.flip:
        raise HfsegError(
            "--task binary evaluates without --eval_scales/--eval_flip during training; drop them, then run "
            "`hfseg evaluate` with them on the saved (two-class) model"
        )


def resolve_task(task: str, id2label: dict[int, str], mask_classification: bool, loss: str | None = None) -> str:
    """`--task auto` -> binary for a two-class label set (one sigmoid logit), else multiclass; other tasks as given.

    A mask-classification model has no one-logit head, and a loss that only softmax takes (ce, ohem) asks for the
    two-class softmax: both keep multiclass.
    """
    if task != "auto":
        return task
    names = [name for name, _ in parse_loss(loss)] if loss else []
    classes = ", ".join(f"{k}={v}" for k, v in sorted(id2label.items()))
    if len(id2label) != 2:
        reason = f"{len(id2label)} classes ({classes})" if len(id2label) <= 4 else f"{len(id2label)} classes"
    elif mask_classification:
        reason = "a mask-classification model has no one-logit head"
    elif any(name not in BINARY_LOSSES for name in names):
        reason = f"--loss {loss} is a softmax loss"
    else:
        logger.info("--task auto: two classes (%s): binary, one sigmoid logit for %s", classes, id2label[1])
        return "binary"
    logger.info("--task auto: multiclass (%s)", reason)
    return "multiclass"


def binary_id2label(id2label: dict[int, str]) -> dict[int, str]:
    """The one-channel model's id2label, {0: foreground name}, from the data's {0: background, 1: foreground}."""
    if len(id2label) != 2:
        names = ", ".join(f"{k}={v}" for k, v in sorted(id2label.items()))
        raise HfsegError(
            f"--task binary needs two classes (0 = background, 1 = foreground), the labels have {len(id2label)} "
            f"({names}); use --task multiclass, or merge classes with --label_map"
        )
    return {0: id2label[1]}


def binary_logits_as_two_classes(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """`logits: (B, 1, h, w) -> (B, 2, h, w)` = [logit(threshold), z]: argmax is 1 exactly where sigmoid(z) >
    threshold, and softmax's foreground probability is sigmoid(z - logit(threshold)) (sigmoid(z) at 0.5)."""
    background = torch.full_like(logits, math.log(threshold / (1.0 - threshold)))
    return torch.cat([background, logits], dim=1)


def export_binary_head(model: nn.Module, id2label: dict[int, str], threshold: float = 0.5) -> nn.Module:
    """Turn a trained one-logit model into a plain two-class model, in place, for saving and serving.

    Every 1x1 output convolution with one channel (the decode head's classifier and an auxiliary head's) becomes a
    two-channel one computing [logit(threshold), z], so argmax over the classes, as the image processors'
    `post_process_semantic_segmentation` does, gives the thresholded mask. The config gets the two class names
    and records the threshold.
    """
    heads = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d) and module.out_channels == 1
    ]
    if model.config.num_labels != 1 or not heads:
        raise HfsegError(
            f"a binary model has one output channel and a one-channel output convolution; this "
            f"{type(model).__name__} has num_labels={model.config.num_labels}; train it with --task binary"
        )
    bias_value = math.log(threshold / (1.0 - threshold))
    for name, conv in heads:
        two = nn.Conv2d(
            conv.in_channels, 2, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups, bias=True
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            two.weight.zero_()
            two.weight[1:].copy_(conv.weight)
            two.bias.fill_(bias_value)
            two.bias[1] = conv.bias[0] if conv.bias is not None else 0.0
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, two)
    model.config.id2label = {int(k): v for k, v in id2label.items()}
    model.config.label2id = {v: int(k) for k, v in id2label.items()}
    setattr(model.config, THRESHOLD_ATTRIBUTE, threshold)
    return model
