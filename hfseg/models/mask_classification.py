"""Mask-classification models (Mask2Former, MaskFormer, OneFormer, EoMT) trained on semantic maps: their own
Hungarian-matched loss with the number of masks averaged over processes, its main and auxiliary parts, and
per-pixel class scores from their (class, mask) query outputs."""

from __future__ import annotations

import re

import torch
from torch import nn

from hfseg.errors import HfsegError

# Loss keys of the auxiliary (intermediate decoder layer) terms: `loss_dice_3`, `loss_cross_entropy_0`, ...
AUXILIARY_LOSS_KEY = re.compile(r"_\d+$")


def check_mask_classification_options(model_type: str, task: str, training_args) -> None:
    """Refuse hfseg's per-pixel loss options, which a mask-classification model's own loss never reads, and
    OneFormer, whose forward pass needs task-token inputs that hfseg does not build yet."""
    if model_type == "oneformer":
        raise HfsegError(
            'OneFormer cannot be fine-tuned by hfseg yet: its forward pass needs `task_inputs`, the text "the task '
            'is semantic" tokenized by its CLIP tokenizer; fine-tune a Mask2Former, MaskFormer or EoMT model instead'
        )
    if task == "binary":
        raise HfsegError(
            f"--task binary: a {model_type} model classifies masks, it has no one-logit head; drop --task binary "
            "(a 0/1 label set trains as two classes)"
        )
    changed = [
        f"--{name} {getattr(training_args, name)}"
        for name, defaults in (("loss", (None, "ce")), ("class_weights", (None,)), ("class_weighting", ("none",)))
        if getattr(training_args, name, defaults[0]) not in defaults
    ]
    if getattr(training_args, "label_smoothing", 0.0):
        changed.append(f"--label_smoothing {training_args.label_smoothing}")
    if changed:
        raise HfsegError(
            f"{', '.join(changed)}: a {model_type} model trains with its own loss (Hungarian matching, class "
            "cross-entropy + mask BCE + Dice; weights in its config: class_weight, mask_weight, dice_weight, "
            "no_object_weight); drop the flag or set those through --config_overrides"
        )


def criteria(model: nn.Module) -> list[nn.Module]:
    """The model's loss modules (`Mask2FormerLoss`, `MaskFormerLoss`, `OneFormerLoss`, `EomtLoss`)."""
    return [module for module in model.modules() if callable(getattr(module, "get_num_masks", None))]


def average_num_masks(class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The number of target masks per process, averaged over all processes (at least 1), that normalises the mask
    and Dice losses, so that 2 processes with half the batch each train like 1 process with all of it.

    transformers' own `get_num_masks` averages with accelerate's `reduce` (whose default is already the mean)
    and divides by the number of processes again: with N processes it normalised by 1/N of the masks.
    """
    num_masks = torch.as_tensor(float(sum(len(classes) for classes in class_labels)), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num_masks)
        num_masks = num_masks / torch.distributed.get_world_size()
    return torch.clamp(num_masks, min=1)


def use_average_num_masks(model: nn.Module) -> None:
    """Every loss module of `model` normalises by `average_num_masks`."""
    for criterion in criteria(model):
        criterion.get_num_masks = average_num_masks


class LossParts:
    """The main and auxiliary parts of a mask-classification model's loss, caught from its loss modules.

    Mask2Former, MaskFormer and OneFormer compute every term in one call (auxiliary keys end in `_<layer>`); EoMT
    calls its loss once per supervised layer, the last layer's call being the main one. The terms are weighted
    in place after the call, so they are read after the forward pass (`pop`).
    """

    def __init__(self, model: nn.Module):
        self.calls: list[dict[str, torch.Tensor]] = []
        for criterion in criteria(model):
            criterion.register_forward_hook(self._record)

    def _record(self, module, inputs, output) -> None:
        self.calls.append(output)

    def pop(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(main, auxiliary) weighted loss of the last forward pass, detached; None when no loss was computed."""
        calls, self.calls = self.calls, []
        if not calls:
            return None
        main = sum(value for key, value in calls[-1].items() if not AUXILIARY_LOSS_KEY.search(key))
        total = sum(sum(terms.values()) for terms in calls)
        return main.detach(), (total - main).detach()
