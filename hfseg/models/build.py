"""Build or load an `AutoModelForSemanticSegmentation` and its image processor for a label set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import transformers
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
)
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

from hfseg.errors import HfsegError
from hfseg.hub.network import require_hub
from hfseg.models.binary import binary_id2label
from hfseg.models.channels import adapt_model_input_channels

logger = logging.getLogger(__name__)


#: Models that predict N masks, each with class probabilities plus "no object", instead of per-pixel logits.
MASK_CLASSIFICATION_MODEL_TYPES = frozenset({"mask2former", "maskformer", "oneformer", "eomt"})


def supported_model_types() -> list[str]:
    return sorted(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)


def is_mask_classification(model_or_config) -> bool:
    """Whether a model (or its config) is a mask-classification model: Mask2Former, MaskFormer, OneFormer, EoMT."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) in MASK_CLASSIFICATION_MODEL_TYPES


def segmentation_model_class(config):
    """The Auto class that loads `config`'s model: universal segmentation for mask classification, else semantic."""
    return AutoModelForUniversalSegmentation if is_mask_classification(config) else AutoModelForSemanticSegmentation


def _config_overrides(model_args) -> dict:
    if not model_args.config_overrides:
        return {}
    try:
        overrides = json.loads(model_args.config_overrides)
    except json.JSONDecodeError as error:
        raise HfsegError(f"--config_overrides is not valid JSON: {error}") from None
    if not isinstance(overrides, dict):
        raise HfsegError("--config_overrides must be a JSON object of config attributes")
    return overrides


def _label_kwargs(id2label: dict[int, str], ignore_index: int) -> dict:
    return {
        "num_labels": len(id2label),
        "id2label": {int(k): v for k, v in id2label.items()},
        "label2id": {v: int(k) for k, v in id2label.items()},
        "semantic_loss_ignore_index": ignore_index,
    }


def build_model(model_args, id2label: dict[int, str], ignore_index: int = 255):
    """A semantic-segmentation model whose head has `len(id2label)` classes (one logit with `--task binary`).

    With `model_type`, a random-init model from a config (no download); otherwise a checkpoint is loaded
    and a head of another size is replaced (`ignore_mismatched_sizes`).
    """
    overrides = _config_overrides(model_args)
    if getattr(model_args, "task", "multiclass") == "binary":
        id2label = binary_id2label(id2label)  # one sigmoid logit for the foreground
    labels = _label_kwargs(id2label, ignore_index)
    if model_args.model_type:
        if model_args.model_type not in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES:
            raise HfsegError(_unsupported_message(model_args.model_type))
        backbone = _pretrained_backbone(model_args, overrides)
        config = AutoConfig.for_model(model_args.model_type, **overrides, **labels)
        model = AutoModelForSemanticSegmentation.from_config(config)
        if backbone is not None:
            model.backbone.load_state_dict(backbone.state_dict())
        return _with_input_channels(model, model_args)
    name = model_args.model_name_or_path
    if not name:
        raise HfsegError("no model given: pass --model_name_or_path (Hub id or directory) or --model_type")
    kwargs = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
    config = load_segmentation_config(model_args, overrides)
    for key, value in labels.items():
        setattr(config, key, value)
    model = AutoModelForSemanticSegmentation.from_pretrained(
        name, config=config, ignore_mismatched_sizes=True, use_safetensors=None, **kwargs
    )
    return _with_input_channels(model, model_args)


def _with_input_channels(model, model_args):
    """`--num_channels`: the first convolution adapted from the weights it has (pretrained or random)."""
    num_channels = getattr(model_args, "num_channels", None)
    return model if num_channels is None else adapt_model_input_channels(model, num_channels)


def load_segmentation_config(model_args, overrides: dict | None = None):
    """The config of `--model_name_or_path`, checked to be one of a semantic-segmentation model."""
    return segmentation_config(
        model_args.model_name_or_path,
        "--model_name_or_path",
        {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code, **(overrides or {})},
        fix="pass a checkpoint directory with a config.json, a Hub id, or --model_type to start from a random init",
    )


def segmentation_config(name: str, flag: str, kwargs: dict, fix: str):
    """`AutoConfig.from_pretrained(name, **kwargs)`, checked to be a semantic-segmentation model's config.

    Raises:
        HfsegError: offline for a Hub id, no readable config (the message names `flag` and gives `fix`), or a
            model type with no semantic-segmentation class.
    """
    require_hub(flag, name)
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        raise HfsegError(f"{flag} {name}: cannot load a model config ({str(error).splitlines()[0]}); {fix}") from None
    if type(config) not in AutoModelForSemanticSegmentation._model_mapping and not is_mask_classification(config):
        raise HfsegError(
            f"{name} is a '{config.model_type}' checkpoint, not a semantic-segmentation model; "
            f"{_unsupported_message(config.model_type)}"
        )
    return config


def _pretrained_backbone(model_args, overrides: dict):
    """The backbone model named by `backbone_name_or_path`; its config goes into `overrides["backbone_config"]`."""
    name = getattr(model_args, "backbone_name_or_path", None)
    if not name:
        return None
    if model_args.model_type != "upernet":
        raise HfsegError(
            f"--backbone_name_or_path works with --model_type upernet, not '{model_args.model_type}'; "
            "for other models pass the whole checkpoint as --model_name_or_path"
        )
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    require_hub("--backbone_name_or_path", name)
    requested = dict(overrides.get("backbone_config") or {})  # e.g. drop_path_rate, out_features
    requested_type = requested.pop("model_type", None)
    out_features = requested.pop("out_features", None) or [f"stage{i}" for i in range(1, 5)]
    kwargs = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
    config = AutoConfig.from_pretrained(name, **kwargs)
    if requested_type and requested_type != config.model_type:
        raise HfsegError(
            f"--backbone_name_or_path {name} is a '{config.model_type}' checkpoint but "
            f"config_overrides.backbone_config asks for '{requested_type}'; make them agree"
        )
    for key, value in requested.items():
        setattr(config, key, value)
    # Not AutoBackbone.from_pretrained: it asks the Hub whether the name exists even for a local folder.
    if type(config) not in MODEL_FOR_BACKBONE_MAPPING:
        raise HfsegError(
            f"--backbone_name_or_path {name} is a '{config.model_type}' checkpoint with no backbone class in "
            "transformers; use e.g. a ConvNeXt, Swin or ResNet checkpoint"
        )
    config.out_features = out_features
    try:
        backbone = MODEL_FOR_BACKBONE_MAPPING[type(config)].from_pretrained(name, config=config, **kwargs)
    except (ValueError, OSError) as error:
        raise HfsegError(f"--backbone_name_or_path {name} cannot serve as a UperNet backbone: {error}") from None
    overrides["backbone_config"] = backbone.config
    return backbone


def _unsupported_message(model_type: str) -> str:
    return (
        f"model type '{model_type}' has no semantic-segmentation head in transformers; supported: "
        f"{', '.join(supported_model_types())}"
    )


def build_image_processor(model_args):
    """The checkpoint's image processor (or a fresh one for `model_type`), sized and with label reduction off:
    hfseg's adapters apply the label spec themselves, exactly once."""
    if model_args.model_type:
        class_names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_args.model_type) or {}
        class_name = class_names.get("torchvision") or class_names.get("pil") or "SegformerImageProcessor"
        processor = getattr(transformers, class_name)()
    else:
        if not model_args.model_name_or_path:
            raise HfsegError("no model given: pass --model_name_or_path (Hub id or directory) or --model_type")
        load_segmentation_config(model_args)  # a clear error for a checkpoint that is no segmentation model
        kwargs = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
        try:
            processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path, **kwargs)
        except (OSError, ValueError) as error:
            raise HfsegError(
                f"--model_name_or_path {model_args.model_name_or_path}: cannot load its image processor "
                f"({str(error).splitlines()[0]}); add a preprocessor_config.json to the checkpoint"
            ) from None
    if model_args.image_size:
        processor.size = {"height": model_args.image_size, "width": model_args.image_size}
    if hasattr(processor, "do_reduce_labels"):
        processor.do_reduce_labels = False
    if getattr(processor, "do_center_crop", False):  # classification checkpoints crop; segmentation must not
        processor.do_center_crop = False
    return processor


def processor_input_size(processor) -> int | None:
    """The square side the processor resizes to, if it resizes to a fixed size."""
    size = getattr(processor, "size", None) or {}
    if not getattr(processor, "do_resize", True):
        return None
    if "height" in size:
        return int(size["height"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    return None


def processor_mean_std(processor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from hfseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = getattr(processor, "image_mean", None) or IMAGENET_MEAN
    std = getattr(processor, "image_std", None) or IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


ALIGNMENT_BYTES = 64  # what torch's CPU allocator guarantees


def own_aligned_storage(model):
    """The model, with every parameter and buffer that sits at an unaligned address copied into its own memory.

    Weights loaded from safetensors are views into the file's buffer, most of them not 64-byte aligned, and
    CPU kernels then take other vector paths and round differently: the reloaded model's logits differed from
    the in-memory one's by 2e-7, enough to flip a near-tie pixel. Freshly allocated copies make `hfseg evaluate`
    reproduce training's evaluation exactly (and the file is no longer mapped).
    """
    import torch

    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.device.type == "cpu" and tensor.data_ptr() % ALIGNMENT_BYTES:
                tensor.data = tensor.data.clone()
    return model


def load_for_inference(name: str, revision: str = "main", trust_remote_code: bool = False):
    """A saved semantic-segmentation model (local directory or Hub id) and its image processor, in eval mode.

    A local output dir of a run that did not finish is refused with the way to resume it.
    """
    from hfseg.training.checkpoints import check_output_complete, check_saved_model

    if Path(name).is_dir():
        check_output_complete(name)
        check_saved_model(name)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = segmentation_config(name, "--model", kwargs, fix="pass a saved model directory or a Hub id")
    model_class = segmentation_model_class(config)
    model = own_aligned_storage(model_class.from_pretrained(name, config=config, **kwargs))
    try:
        processor = AutoImageProcessor.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        raise HfsegError(
            f"--model {name}: no image processor ({error}); save it next to the model "
            "(`processor.save_pretrained(DIR)`; hfseg finetune does)"
        ) from None
    return model.eval(), processor
