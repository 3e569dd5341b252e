"""Optimizer parameter groups: the decode head at lr x `head_lr_mult`, no weight decay on norm layers, biases and
position embeddings (the SegFormer/mmsegmentation `paramwise_cfg`)."""

from __future__ import annotations

import re

from torch import nn

# Parameter names that never get weight decay, besides biases and everything inside a normalisation layer.
NO_DECAY_NAME_PATTERNS = (
    r"bias$",
    r"(?:^|[._])norm(?:$|\.)",
    r"layernorm",
    r"position_embedding",
    r"pos_embed",
    r"relative_position_bias_table",
    r"cls_token",
)


def backbone_prefix(model: nn.Module) -> str | None:
    """Name of the child holding the pretrained encoder: `base_model_prefix` (segformer, beit, dpt, mobilevit,
    mobilenet_v2) or `backbone` (UperNet); None when the model has no separate encoder."""
    prefix = getattr(model, "base_model_prefix", "")
    children = dict(model.named_children())
    if prefix in children:
        return prefix
    if "backbone" in children:
        return "backbone"
    return None


def head_parameter_names(model: nn.Module) -> set[str]:
    """Parameters outside the encoder: decode head, auxiliary head, necks (DPT), segmentation heads (DeepLabV3)."""
    prefix = backbone_prefix(model)
    if prefix is None:
        return set()
    return {name for name, _ in model.named_parameters() if not name.startswith(prefix + ".")}


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Biases, parameters of normalisation layers (any module whose class name contains 'Norm') and position
    embeddings."""
    names = set()
    for module_name, module in model.named_modules():
        in_norm = "norm" in type(module).__name__.lower()
        for parameter_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{parameter_name}" if module_name else parameter_name
            if in_norm or any(re.search(pattern, full.lower()) for pattern in NO_DECAY_NAME_PATTERNS):
                names.add(full)
    return names


def parameter_groups(
    model: nn.Module, learning_rate: float, weight_decay: float, head_lr_mult: float = 1.0
) -> list[dict]:
    """Trainable parameters split into up to four groups: (encoder | head) x (decay | no decay).

    Each group carries its own `lr` and `weight_decay`; schedulers scale every group's lr by the same factor,
    so the head keeps its multiple through warm-up and decay. Empty groups are left out.
    """
    heads = head_parameter_names(model) if head_lr_mult != 1.0 else set()
    no_decay = no_decay_parameter_names(model)
    groups: dict[tuple[bool, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_head, decays = name in heads, name not in no_decay
        group = groups.setdefault(
            (is_head, decays),
            {
                "params": [],
                "names": [],
                "lr": learning_rate * (head_lr_mult if is_head else 1.0),
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    return list(groups.values())
