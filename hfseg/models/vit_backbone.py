"""ViT encoders (DINOv2, DINOv3) behind UperNet: which transformer layers feed the decoder, and input sizes rounded
to a multiple of the patch size.

A ViT gives one stride (the patch size) at every layer; with `reshape_hidden_states` transformers' backbone returns
each chosen layer as a (B, hidden_size, H/patch, W/patch) map, and UperNet's FPN then fuses maps of one size.
"""

from __future__ import annotations

import logging

from transformers import AutoConfig

from hfseg.errors import HfsegError

logger = logging.getLogger(__name__)

VIT_BACKBONE_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit")
DEFAULT_NUM_OUT_LAYERS = 4  # UperNet's pyramid has four inputs
MIN_OUT_LAYERS = 3  # UperNet's auxiliary head reads the third


def is_vit_backbone(config) -> bool:
    return getattr(config, "model_type", None) in VIT_BACKBONE_TYPES


def default_out_indices(num_layers: int, count: int = DEFAULT_NUM_OUT_LAYERS) -> list[int]:
    """`count` evenly spaced layers (1 = the first transformer layer) ending at the last: 12 -> [3, 6, 9, 12]."""
    count = min(count, num_layers)
    return [round(num_layers * (i + 1) / count) for i in range(count)]


def out_features_for(config, out_indices: list[int] | None) -> list[str]:
    """The backbone stages (`stageN` = output of transformer layer N, or stage N of a CNN) UperNet reads.

    Default: 4 evenly spaced layers for a ViT, stage1..stage4 otherwise.

    Raises:
        HfsegError: an index outside 1..number of stages, or fewer than 3 stages.
    """
    stages = [name for name in getattr(config, "stage_names", []) if name != "stem"]
    if not out_indices:
        if is_vit_backbone(config):
            return [f"stage{i}" for i in default_out_indices(config.num_hidden_layers)]
        return [f"stage{i}" for i in range(1, 5)]
    wrong = [index for index in out_indices if not 1 <= index <= len(stages)]
    if wrong:
        raise HfsegError(
            f"--out_indices {' '.join(map(str, out_indices))}: {wrong[0]} is no stage of the '{config.model_type}' "
            f"backbone, which has {len(stages)} (1..{len(stages)}); e.g. --out_indices "
            f"{' '.join(map(str, default_out_indices(len(stages))))}"
        )
    if len(out_indices) < MIN_OUT_LAYERS:
        raise HfsegError(
            f"--out_indices {' '.join(map(str, out_indices))}: UperNet reads at least {MIN_OUT_LAYERS} stages (its "
            f"auxiliary head reads the third); pass {MIN_OUT_LAYERS} or more, e.g. "
            f"{' '.join(map(str, default_out_indices(len(stages))))}"
        )
    return [f"stage{index}" for index in out_indices]


def backbone_config_of(model_args):
    """The encoder's config when it is a backbone inside the model (UperNet), else None: from
    --backbone_name_or_path, a `backbone_config` in --config_overrides, or the checkpoint's config."""
    from hfseg.models.build import _config_overrides, load_segmentation_config

    if model_args.model_type:
        name = getattr(model_args, "backbone_name_or_path", None)
        if name:
            from hfseg.hub.network import require_hub

            require_hub("--backbone_name_or_path", name)
            kwargs = {"revision": model_args.revision, "trust_remote_code": model_args.trust_remote_code}
            try:
                return AutoConfig.from_pretrained(name, **kwargs)
            except (OSError, ValueError) as error:
                raise HfsegError(
                    f"--backbone_name_or_path {name}: cannot load its config ({str(error).splitlines()[0]}); pass a "
                    "Hub id or a folder with a config.json"
                ) from None
        requested = _config_overrides(model_args).get("backbone_config")
        if isinstance(requested, dict) and requested.get("model_type"):
            return AutoConfig.for_model(**requested)
        return None
    return getattr(load_segmentation_config(model_args), "backbone_config", None)


def round_to_multiple(size: int, multiple: int) -> int:
    """The multiple of `multiple` nearest to `size` (at least one `multiple`): 512 -> 518 for 14, 512 for 16."""
    return max(multiple, round(size / multiple) * multiple)


def align_sizes_to_patch(model_args, data_args, training_args, processor) -> int | None:
    """With a ViT backbone: --crop_size, the processor's input size (--image_size), --eval_crop_size and
    --eval_stride rounded to a multiple of its patch size (each change logged), so that no pixel row falls
    between patches. Returns the patch size, or None for other encoders (nothing changed)."""
    config = backbone_config_of(model_args)
    if not is_vit_backbone(config):
        return None
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]

    def rounded(flag: str, size: int | None) -> int | None:
        if not size:
            return size
        new = round_to_multiple(size, patch)
        if new != size:
            logger.info(
                "%s %d -> %d: a multiple of the %s backbone's patch size %d", flag, size, new, config.model_type, patch
            )
        return new

    data_args.crop_size = rounded("--crop_size", data_args.crop_size)
    training_args.eval_crop_size = rounded("--eval_crop_size", training_args.eval_crop_size)
    training_args.eval_stride = rounded("--eval_stride", training_args.eval_stride)
    size = getattr(processor, "size", None) or {}
    if "height" in size and "width" in size:  # the model's input size: --image_size or the processor's default
        height = rounded("--image_size", size["height"])
        processor.size = {"height": height, "width": round_to_multiple(size["width"], patch)}
        if model_args.image_size:
            model_args.image_size = height
    return patch


def backbone_config_with_layers(backbone_config: dict, out_indices: list[int] | None):
    """A `backbone_config` given in --config_overrides (a random-init UperNet) as a config whose `out_features` are
    `out_features_for(..., out_indices)`; a dict that chooses its own `out_features`/`out_indices` is kept."""
    if "model_type" not in backbone_config or {"out_features", "out_indices"} & set(backbone_config):
        return backbone_config
    config = AutoConfig.for_model(**backbone_config)
    config.out_features = out_features_for(config, out_indices)
    return config
