"""Build or load a semantic-segmentation model and its image processor for a label set: a per-pixel classifier
(`AutoModelForSemanticSegmentation`) or a mask-classification model (`AutoModelForUniversalSegmentation`:
Mask2Former, MaskFormer, OneFormer, EoMT) trained on semantic maps."""

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
from hfseg.models.mask_classification import (
    TASK_INPUTS_ATTRIBUTE,
    fit_mask_classification_config,
    needs_task_inputs,
    set_task_inputs,
)
from hfseg.models.param_groups import ENCODER_PATHS
from hfseg.models.vit_backbone import backbone_config_with_layers, out_features_for

logger = logging.getLogger(__name__)


# Models that predict (class, binary mask) pairs per query; trained on semantic maps through per-class masks
# (`hfseg.data.mask_targets`) and their own Hungarian-matched loss.
MASK_CLASSIFICATION_MODEL_TYPES = ("eomt", "eomt_dinov3", "mask2former", "maskformer", "oneformer")


def supported_model_types() -> list[str]:
    return sorted({*MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES, *MASK_CLASSIFICATION_MODEL_TYPES})


def is_mask_classification(model_or_config) -> bool:
    """Whether a model (or its config) predicts per-query classes and masks (`class_queries_logits`,
    `masks_queries_logits`) rather than per-pixel logits."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) in MASK_CLASSIFICATION_MODEL_TYPES


def builds_mask_classification(model_args) -> bool:
    """Whether `--model_type` or the `--model_name_or_path` checkpoint's config is a mask-classification model."""
    if model_args.model_type:
        return model_args.model_type in MASK_CLASSIFICATION_MODEL_TYPES
    return is_mask_classification(load_segmentation_config(model_args, _config_overrides(model_args)))


def model_class_for(config):
    """The Auto class that builds `config`'s segmentation model."""
    if is_mask_classification(config):
        return AutoModelForUniversalSegmentation
    return AutoModelForSemanticSegmentation


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
    out_indices = getattr(model_args, "out_indices", None)
    if out_indices and model_args.model_type != "upernet":
        raise HfsegError(
            f"--out_indices {' '.join(map(str, out_indices))} chooses the backbone layers of a --model_type upernet "
            "model; a checkpoint or another model type keeps its own, so drop --out_indices"
        )
    if model_args.model_type:
        if model_args.model_type not in supported_model_types():
            raise HfsegError(_unsupported_message(model_args.model_type))
        backbone = _pretrained_backbone(model_args, overrides)
        if backbone is None and isinstance(overrides.get("backbone_config"), dict):
            overrides["backbone_config"] = backbone_config_with_layers(overrides["backbone_config"], out_indices)
        config = AutoConfig.for_model(model_args.model_type, **overrides, **labels)
        fit_mask_classification_config(config)
        model = model_class_for(config).from_config(config)
        if backbone is not None:
            encoder = model.get_submodule(ENCODER_PATHS.get(config.model_type, "backbone"))
            encoder.load_state_dict(backbone.state_dict())
        return _with_input_channels(model, model_args)
    name = model_args.model_name_or_path
    if not name:
        raise HfsegError("no model given: pass --model_name_or_path (Hub id or directory) or --model_type")
    kwargs = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
    config = load_segmentation_config(model_args, overrides)
    for key, value in labels.items():
        setattr(config, key, value)
    fit_mask_classification_config(config)
    model = model_class_for(config).from_pretrained(
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
    if model_args.model_type != "upernet" and model_args.model_type not in ENCODER_PATHS:
        raise HfsegError(
            f"--backbone_name_or_path works with --model_type {', '.join(['upernet', *ENCODER_PATHS])}, not "
            f"'{model_args.model_type}'; for other models pass the whole checkpoint as --model_name_or_path"
        )
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

    require_hub("--backbone_name_or_path", name)
    requested = dict(overrides.get("backbone_config") or {})  # e.g. drop_path_rate, out_features
    requested_type = requested.pop("model_type", None)
    out_features = requested.pop("out_features", None)
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
            "transformers; use e.g. a ConvNeXt, Swin, ResNet or DINOv2 checkpoint"
        )
    config.out_features = out_features or out_features_for(config, getattr(model_args, "out_indices", None))
    try:
        backbone = MODEL_FOR_BACKBONE_MAPPING[type(config)].from_pretrained(name, config=config, **kwargs)
    except (ValueError, OSError) as error:
        raise HfsegError(
            f"--backbone_name_or_path {name} cannot serve as a {model_args.model_type} backbone: {error}"
        ) from None
    overrides["backbone_config"] = backbone.config
    return backbone


def _unsupported_message(model_type: str) -> str:
    return (
        f"model type '{model_type}' has no semantic-segmentation head in transformers; supported: "
        f"{', '.join(supported_model_types())}"
    )


def build_tokenizer(model_args, config):
    """OneFormer's CLIP tokenizer (None for other models), from `--tokenizer_name_or_path` or else the
    `--model_name_or_path` checkpoint; the semantic task's token ids go into `config` (`set_task_inputs`).

    Raises:
        HfsegError: a OneFormer without a tokenizer to load, a tokenizer that does not load, or one whose ids do not
            fit the model's text encoder; `--tokenizer_name_or_path` for a model that reads no text.
    """
    name = getattr(model_args, "tokenizer_name_or_path", None)
    if not needs_task_inputs(config):
        if name:
            raise HfsegError(
                f"--tokenizer_name_or_path {name}: a {config.model_type} model reads no text (only OneFormer's task "
                "and text inputs are tokenized); drop the flag"
            )
        return None
    flag = "--tokenizer_name_or_path"
    kwargs = {"trust_remote_code": model_args.trust_remote_code}
    if not name and not model_args.model_type:
        flag, name = "--model_name_or_path", model_args.model_name_or_path
        kwargs["revision"] = model_args.revision
    if not name:
        raise HfsegError(
            '--model_type oneformer: its forward pass needs `task_inputs`, the text "the task is semantic" '
            "tokenized by a CLIP tokenizer; pass --tokenizer_name_or_path (a OneFormer checkpoint such as "
            "shi-labs/oneformer_ade20k_swin_tiny, or a folder with its tokenizer files)"
        )
    tokenizer = load_text_tokenizer(name, flag, kwargs)
    if getattr(config, "is_training", False) and len(tokenizer) > config.text_encoder_vocab_size:
        raise HfsegError(
            f"{flag} {name}: its {len(tokenizer)} tokens do not fit the text encoder's text_encoder_vocab_size="
            f"{config.text_encoder_vocab_size}; use the model's own tokenizer or set text_encoder_vocab_size in "
            "--config_overrides"
        )
    set_task_inputs(config, tokenizer)
    return tokenizer


def load_text_tokenizer(name: str, flag: str, kwargs: dict):
    """`AutoTokenizer.from_pretrained(name)`, padding with id 0.

    OneFormer's processor pads its token ids with 0 (ids x attention mask), as the authors' tokenizer did;
    transformers' image-segmentation pipeline pads the task text with the tokenizer's pad id instead (CLIP's is
    `<|endoftext|>`, the last id), which OneFormer reads as a different task token. With the token of id 0 as the pad
    token, the tokenizer saved with a run gives the pipeline the task inputs the model was trained with.
    """
    from transformers import AutoTokenizer

    require_hub(flag, name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        raise HfsegError(
            f"{flag} {name}: cannot load a tokenizer ({str(error).splitlines()[0]}); OneFormer needs its CLIP "
            "tokenizer: pass --tokenizer_name_or_path with a checkpoint or folder that has tokenizer files"
        ) from None
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    return tokenizer


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
        config = load_segmentation_config(model_args)  # a clear error for a checkpoint that is no segmentation model
        kwargs = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
        try:
            processor = AutoImageProcessor.from_pretrained(
                model_args.model_name_or_path, **kwargs, **processor_overrides(config)
            )
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
    set_band_normalisation(processor, model_args)
    return processor


def processor_overrides(config) -> dict:
    """Image-processor fields hfseg sets when loading a checkpoint's processor: a OneFormer processor loses its
    class-info file (ADE20K's or COCO's class names, which it would fetch from a Hub data set as it loads; hfseg takes
    the names from id2label and builds the text queries itself) and the class and text counts that go with it."""
    if needs_task_inputs(config):
        return {"class_info_file": None, "num_text": None, "num_labels": None}
    return {}


def set_band_normalisation(processor, model_args) -> None:
    """`--image_mean`/`--image_std` on the processor (saved with the model, so evaluate, predict and the pipeline
    normalise as training did), one value per `--num_channels` band. One band from an RGB checkpoint takes the
    average of its RGB values (timm's rule); other counts need the values given.

    Raises:
        HfsegError: a mean or std whose length is not the number of bands.
    """
    for name in ("image_mean", "image_std"):
        values = getattr(model_args, name, None)
        if values is not None:
            setattr(processor, name, [float(value) for value in values])
    num_channels = getattr(model_args, "num_channels", None)
    if num_channels is None:
        return
    for name, values in zip(("image_mean", "image_std"), processor_mean_std(processor), strict=True):
        if num_channels == 1 and len(values) == 3 and getattr(model_args, name, None) is None:
            values = (sum(values) / 3,)
            setattr(processor, name, list(values))
        if len(values) != num_channels:
            raise HfsegError(
                f"--num_channels {num_channels}: {name} has {len(values)} values {list(values)}; give --{name} "
                f"with {num_channels} values, one per band, in [0, 1] units (`hfseg doctor --stats` with the same "
                "data flags computes them from the train split)"
            )


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
    if needs_task_inputs(config):
        config.is_training = False  # inference: no text encoder, no dropout
        if getattr(config, TASK_INPUTS_ATTRIBUTE, None) is None:  # a OneFormer checkpoint not saved by hfseg
            set_task_inputs(config, load_text_tokenizer(name, "--model", kwargs))
    model = own_aligned_storage(model_class_for(config).from_pretrained(name, config=config, **kwargs))
    try:
        processor = AutoImageProcessor.from_pretrained(name, **kwargs, **processor_overrides(config))
    except (OSError, ValueError) as error:
        raise HfsegError(
            f"--model {name}: no image processor ({error}); save it next to the model "
            "(`processor.save_pretrained(DIR)`; hfseg finetune does)"
        ) from None
    return model.eval(), processor
