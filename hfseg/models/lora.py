"""LoRA through the `peft` library: adapters on the encoder, the heads trained in full (`modules_to_save`), and the
result saved merged (a plain transformers model) and as the adapter alone."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from torch import nn

from hfseg.errors import HfsegError
from hfseg.models.freezing import trainable_parameter_counts
from hfseg.models.param_groups import backbone_prefix

logger = logging.getLogger(__name__)

ADAPTER_DIR_NAME = "adapter"  # output_dir/adapter: adapter_model.safetensors + adapter_config.json
PARAMETER_COUNTS_NAME = "trainable_parameters.json"

# Encoder modules that get LoRA adapters, per encoder type (transformers 5 names). Attention query and value
# projections as the peft semantic-segmentation guide (and the LoRA paper) adapt them; ConvNeXt has no attention:
# its pointwise (linear) convolutions.
DEFAULT_TARGET_MODULES = {
    "segformer": ["q_proj", "v_proj"],
    "swin": ["q_proj", "v_proj"],
    "beit": ["q_proj", "v_proj"],
    "data2vec-vision": ["q_proj", "v_proj"],
    "dinov2": ["q_proj", "v_proj"],
    "dinov3_vit": ["q_proj", "v_proj"],
    "dpt": ["q_proj", "v_proj"],
    "vit": ["q_proj", "v_proj"],
    "convnext": ["pwconv1", "pwconv2"],
    "convnextv2": ["pwconv1", "pwconv2"],
}


def encoder_type(model: nn.Module) -> str:
    """The encoder's model type: the backbone config's for UperNet-style models, else the model's own."""
    backbone_config = getattr(model.config, "backbone_config", None)
    if backbone_config is not None:
        return backbone_config.model_type
    return model.config.model_type


def head_module_names(model: nn.Module) -> list[str]:
    """Modules outside the encoder (decode_head, auxiliary_head, neck, head ...; for an encoder at a dotted path,
    every sibling along it, e.g. Mask2Former's pixel decoder, transformer decoder and class predictor): trained in
    full."""
    prefix = backbone_prefix(model)
    if prefix is None:
        raise HfsegError(f"--peft lora: {type(model).__name__} has no separate encoder to adapt; drop --peft")
    parts = prefix.split(".")
    names = []
    for depth, part in enumerate(parts):
        parent = model.get_submodule(".".join(parts[:depth]))
        names += [
            ".".join([*parts[:depth], name])
            for name, child in parent.named_children()
            if name != part and any(True for _ in child.parameters())
        ]
    return names


def target_modules_for(model: nn.Module, requested: list[str] | None) -> list[str]:
    if requested:
        return list(requested)
    kind = encoder_type(model)
    if kind not in DEFAULT_TARGET_MODULES:
        known = ", ".join(DEFAULT_TARGET_MODULES)
        raise HfsegError(
            f"--peft lora: no default --lora_target_modules for a '{kind}' encoder; pass the names of its linear "
            f"layers (e.g. --lora_target_modules q_proj v_proj); defaults exist for {known}"
        )
    return DEFAULT_TARGET_MODULES[kind]


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, target_modules: list[str] | None = None):
    """`peft.get_peft_model` with LoRA on the encoder's `target_modules` and every head in `modules_to_save`.

    Only encoder modules are adapted (a pattern anchored at the encoder's prefix), so a head layer that shares a
    name is trained in full, not adapted.
    """
    from peft import LoraConfig, get_peft_model

    prefix = backbone_prefix(model)
    heads = head_module_names(model)
    targets = target_modules_for(model, target_modules)
    pattern = rf"^{prefix}\..*\.({'|'.join(targets)})$"
    if not any(re.match(pattern, name) for name, _ in model.named_modules()):
        raise HfsegError(
            f"--lora_target_modules {' '.join(targets)}: no module of the {encoder_type(model)} encoder has such a "
            "name; pass names of its linear or 1x1-conv layers"
        )
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, modules_to_save=heads, bias="none"
    )
    return get_peft_model(model, config)


def training_method(model_args, training_args) -> str:
    """lora, freeze_backbone or full; LoRA with a frozen encoder is refused (the adapters are in the encoder)."""
    frozen = getattr(training_args, "freeze_backbone", False) or getattr(training_args, "freeze_backbone_steps", 0)
    if model_args.peft == "lora":
        if frozen:
            raise HfsegError(
                "--peft lora with --freeze_backbone/--freeze_backbone_steps: the adapters live in the encoder and "
                "the base weights are frozen by LoRA already; pass one of the two"
            )
        return "lora"
    return "freeze_backbone" if frozen else "full"


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def base_model_of(model):
    """The transformers model inside a `PeftModel` (its parameters are the same objects), else `model`."""
    return model.get_base_model() if is_peft_model(model) else model


def load_adapter_weights(model, checkpoint: str | Path) -> None:
    """A checkpoint's `adapter_model.safetensors` (adapters and heads) into the `PeftModel` in place; every key must
    be one of the model's."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(checkpoint) / "adapter_model.safetensors"
    if not path.is_file():
        raise HfsegError(
            f"{checkpoint} holds no adapter_model.safetensors; resume a --peft lora run from its own checkpoint"
        )
    result = set_peft_model_state_dict(model, load_file(str(path)))
    if result.unexpected_keys:
        raise HfsegError(
            f"{path}: weights {', '.join(result.unexpected_keys[:3])} do not fit this model; resume with the "
            "run's own --lora_* and model flags"
        )


def merged_model(model):
    """The adapters folded into the weights and the heads taken from `modules_to_save`: a plain transformers model."""
    return model.merge_and_unload() if is_peft_model(model) else model


def save_adapter(model, output_dir: str | Path) -> Path:
    """`adapter_model.safetensors` + `adapter_config.json` in `output_dir/adapter` (LoRA weights and the heads)."""
    directory = Path(output_dir) / ADAPTER_DIR_NAME
    model.save_pretrained(str(directory))
    return directory


def write_parameter_counts(output_dir: str | Path, counts: dict) -> Path:
    """`trainable_parameters.json`: {method, trainable, total, share} for the log and the model card."""
    path = Path(output_dir) / PARAMETER_COUNTS_NAME
    path.write_text(json.dumps(counts, indent=2) + "\n")
    return path


def parameter_counts(model, method: str) -> dict:
    trainable, total = trainable_parameter_counts(model)
    return {"method": method, "trainable": trainable, "total": total, "share": trainable / total if total else 0.0}


def read_parameter_counts(output_dir: str | Path) -> dict | None:
    path = Path(output_dir) / PARAMETER_COUNTS_NAME
    return json.loads(path.read_text()) if path.is_file() else None
