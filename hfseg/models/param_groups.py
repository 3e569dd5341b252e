"""Optimizer parameter groups: the decode head at lr x `head_lr_mult`, no weight decay on norm layers, biases,
layer scales and position embeddings (the SegFormer/mmsegmentation `paramwise_cfg`), and optionally layer-wise
lr decay over the encoder (mmsegmentation's `LearningRateDecayOptimizerConstructor`, as the ConvNeXt and BEiT
recipes use it)."""

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
    r"layer_scale",  # ConvNeXt's gamma
    r"lambda_\d$",  # BEiT's layer scale
)

# Encoder parameters at the bottom of layer-wise lr decay (id 0): stems, patch/position embeddings and, as in
# mmsegmentation's stage-wise ConvNeXt rule, the downsampling layers between stages.
EMBEDDING_NAME_PATTERN = re.compile(r"embed|stem|cls_token|mask_token|downsampl")
# The block or stage a parameter belongs to: stages.N (ConvNeXt; MiT/SegFormer in transformers 5), layers.N (Swin),
# layer.N (BEiT, ViT/DPT), block.N (older MiT naming).
BLOCK_INDEX_PATTERN = re.compile(r"(?:^|\.)(?:stages|layers|layer|block)\.(\d+)\.")


# Where the pretrained image encoder sits in models whose base model also holds the heads (mask classification).
ENCODER_PATHS = {
    "mask2former": "model.pixel_level_module.encoder",
    "maskformer": "model.pixel_level_module.encoder",
    "oneformer": "model.pixel_level_module.encoder",
}


def backbone_prefix(model: nn.Module) -> str | None:
    """Name of the module holding the pretrained encoder: `base_model_prefix` (segformer, beit, dpt, mobilevit,
    mobilenet_v2), `backbone` (UperNet) or a dotted path (`ENCODER_PATHS`: Mask2Former, MaskFormer, OneFormer); None
    when the model has no separate encoder (EoMT: its ViT and its queries are one stack)."""
    path = ENCODER_PATHS.get(getattr(getattr(model, "config", None), "model_type", None))
    if path is not None:
        return path
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


def encoder_layer_id(name: str, prefix: str) -> int | None:
    """Depth of an encoder parameter for layer-wise lr decay: 0 for embeddings and downsampling layers, N + 1 for
    block or stage N, None for the rest (final norms, heads: the top, at the full lr)."""
    if not name.startswith(prefix + "."):
        return None
    inner = name[len(prefix) + 1 :]
    if EMBEDDING_NAME_PATTERN.search(inner):
        return 0
    match = BLOCK_INDEX_PATTERN.search(inner)
    return int(match.group(1)) + 1 if match else None


def layer_lr_scales(model: nn.Module, decay_rate: float, num_layers: int | None = None) -> dict[str, float]:
    """Parameter name -> lr multiple under layer-wise decay: `decay_rate ** (top - id)`, top = num_layers + 1.

    As mmsegmentation: ids run 0 (embeddings) .. num_layers (last block or stage), everything else is the top and
    keeps the full lr. `num_layers` defaults to the encoder's own depth (its highest block or stage index + 1);
    mmsegmentation's ConvNeXt UperNet configs use stage-wise decay 0.9 with num_layers 6.
    """
    prefix = backbone_prefix(model)
    ids = {name: encoder_layer_id(name, prefix) if prefix else None for name, _ in model.named_parameters()}
    known = [value for value in ids.values() if value is not None]
    top = (num_layers if num_layers is not None else max(known, default=0)) + 1
    return {name: decay_rate ** (top - (top if value is None else min(value, top))) for name, value in ids.items()}


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    head_lr_mult: float = 1.0,
    layer_decay_rate: float = 1.0,
    layer_decay_num_layers: int | None = None,
    also_frozen: set[str] | frozenset[str] = frozenset(),
) -> list[dict]:
    """Trainable parameters split into groups: (encoder | head) x (decay | no decay) x (encoder depth, with
    layer-wise decay).

    Each group carries its own `lr` and `weight_decay`; schedulers scale every group's lr by the same factor,
    so the head keeps its multiple, and each encoder layer its decay, through warm-up and decay. Empty groups
    are left out.

    Args:
        layer_decay_rate: the lr of encoder layer id is multiplied by `rate ** (top - id)` (1.0 = off);
            see `layer_lr_scales`.
        also_frozen: names of parameters frozen now that join training later (`--freeze_backbone_steps`): they
            are in the groups from the start, gradient-less (the optimizer skips them) until they are unfrozen.
    """
    heads = head_parameter_names(model) if head_lr_mult != 1.0 else set()
    no_decay = no_decay_parameter_names(model)
    scales = layer_lr_scales(model, layer_decay_rate, layer_decay_num_layers) if layer_decay_rate != 1.0 else {}
    groups: dict[tuple[bool, bool, float], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad and name not in also_frozen:
            continue
        is_head, decays, scale = name in heads, name not in no_decay, scales.get(name, 1.0)
        group = groups.setdefault(
            (is_head, decays, scale),
            {
                "params": [],
                "names": [],
                "lr": learning_rate * (head_lr_mult if is_head else 1.0) * scale,
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    return list(groups.values())
