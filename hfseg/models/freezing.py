"""Frozen encoders: the backbone's weights out of training and its BatchNorm statistics fixed; heads train."""

from __future__ import annotations

from torch import nn

from hfseg.errors import HfsegError
from hfseg.models.param_groups import backbone_prefix

FROZEN_NORMS_ATTRIBUTE = "_hfseg_frozen_norms"


def backbone_module(model: nn.Module) -> nn.Module:
    """The child holding the pretrained encoder (`backbone_prefix`).

    Raises:
        HfsegError: the model has no separate encoder to freeze.
    """
    prefix = backbone_prefix(model)
    if prefix is None:
        raise HfsegError(
            f"--freeze_backbone: {type(model).__name__} has no separate encoder (no base-model or 'backbone' child) "
            "to freeze; drop the flag"
        )
    return model.get_submodule(prefix)


def backbone_parameter_names(model: nn.Module) -> set[str]:
    prefix = backbone_prefix(model)
    return {name for name, _ in model.named_parameters() if prefix and name.startswith(prefix + ".")}


def _keep_norm_in_eval(module: nn.Module, inputs) -> None:
    if getattr(module, FROZEN_NORMS_ATTRIBUTE, False):
        module.training = False  # Trainer calls model.train() every step: the statistics stay fixed anyway


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) the encoder: `requires_grad` of its parameters, and its BatchNorm layers in eval mode
    (running mean/var neither used from the batch nor updated) for as long as it is frozen, whatever
    `model.train()` says. Heads, their norms included, keep training."""
    encoder = backbone_module(model)
    for parameter in encoder.parameters():
        parameter.requires_grad_(not frozen)
    for module in encoder.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not hasattr(module, FROZEN_NORMS_ATTRIBUTE):
                module.register_forward_pre_hook(_keep_norm_in_eval)
            setattr(module, FROZEN_NORMS_ATTRIBUTE, frozen)
            if not frozen:
                module.training = model.training


def trainable_parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
