"""Run configuration: dataclasses parsed by `HfArgumentParser`, with YAML recipes as defaults.

`--recipe NAME|PATH` loads `recipes/NAME.yaml` (shipped in the wheel as hfseg/recipes); command-line flags
override any field; the resolved configuration is written next to the outputs so a run can be repeated exactly.
This module imports no torch: hfseg's own fields are checked before `SegTrainingArguments`
(hfseg/training/arguments.py) loads it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import json
import re
import types
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers.hf_argparser import HfArgumentParser

from hfseg.errors import HfsegError

PACKAGE_DIR = Path(__file__).resolve().parent
# An installed wheel carries the recipes as hfseg/recipes; a checkout keeps them, the source, at the top level.
RECIPES_DIR = PACKAGE_DIR / "recipes" if (PACKAGE_DIR / "recipes").is_dir() else PACKAGE_DIR.parent / "recipes"
RESOLVED_CONFIG_NAME = "hfseg_config.yaml"
MAX_RECIPE_BYTES = 1 << 20  # shipped recipes are ~2 KB, a resolved hfseg_config.yaml ~5 KB


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Checkpoint to fine-tune: a Hub id (nvidia/mit-b0) or a local directory."},
    )
    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Build a randomly initialised model of this type (segformer, upernet, ...) from a config "
            "instead of loading a checkpoint; needs no download."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON object of config attributes to override, e.g. '{\"hidden_sizes\": [16, 32, 64, 128]}'."
        },
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Model input size (square) for the image processor; default: the checkpoint's."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow a checkpoint's own Python code to run (off unless you trust it)."}
    )
    revision: str = field(default="main", metadata={"help": "Checkpoint revision (branch, tag or commit)."})
    task: str = field(
        default="multiclass",
        metadata={
            "help": "multiclass (softmax over id2label's classes) or binary (one sigmoid logit, num_labels=1, for "
            "background/foreground masks; bce-based losses; saved as a two-class model thresholded at --threshold); "
            "auto: binary when the labels have exactly two classes (and the model has per-pixel logits), else "
            "multiclass.",
            "choices": ["multiclass", "binary", "auto"],
        },
    )
    num_channels: int | None = field(
        default=None,
        metadata={
            "help": "Image bands the model reads (default: the checkpoint's, 3 for RGB). Other than 3, images are "
            "read with their own bands and bit depth (1 = grayscale, N-band TIFFs; 8/16-bit or float). A "
            "pretrained RGB encoder's first convolution is adapted as timm does: summed for 1, repeated and scaled "
            "by 3/N for N."
        },
    )
    image_mean: list[float] | None = field(
        default=None,
        metadata={
            "help": "Per-band normalisation mean, one value per --num_channels band, in [0, 1] units: the image "
            "divided by its type's maximum (255 for 8-bit, 65535 for 16-bit; float images as stored). Default: the "
            "checkpoint's (ImageNet RGB; their average for 1 band). `hfseg doctor --stats` computes it."
        },
    )
    image_std: list[float] | None = field(
        default=None,
        metadata={"help": "Per-band normalisation std, in the units of --image_mean; `hfseg doctor --stats`."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "OneFormer only: the CLIP tokenizer of its task and text inputs (a Hub id or a folder, e.g. "
            "shi-labs/oneformer_ade20k_swin_tiny); default: the --model_name_or_path checkpoint's. Saved with the run."
        },
    )
    # --- training ---
    backbone_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "With --model_type upernet: initialise the encoder from this backbone checkpoint (e.g. "
            "facebook/convnext-tiny-224, microsoft/swin-tiny-patch4-window7-224, facebook/dinov2-small); the heads "
            "start random."
        },
    )
    out_indices: list[int] | None = field(
        default=None,
        metadata={
            "help": "With --model_type upernet: the backbone stages UperNet reads (for a ViT such as DINOv2/DINOv3, "
            "transformer layers, 1 = first); default: 4 evenly spaced layers ending at the last for a ViT "
            "(3 6 9 12 of 12), stages 1-4 otherwise."
        },
    )
    # --- efficient fine-tuning ---
    peft: str = field(
        default="none",
        metadata={
            "help": "Parameter-efficient fine-tuning through the peft library: lora (adapters on the encoder, heads "
            "trained in full); the output is the merged model, plus the adapter alone in output_dir/adapter.",
            "choices": ["none", "lora"],
        },
    )
    lora_r: int = field(default=16, metadata={"help": "--peft lora: rank of the adapters."})
    lora_alpha: float = field(default=16, metadata={"help": "--peft lora: scaling (updates x alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "--peft lora: dropout on the adapters' input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "--peft lora: encoder module names to adapt (default per encoder: q_proj v_proj for SegFormer, "
            "Swin, BEiT, DPT, DINOv2; pwconv1 pwconv2 for ConvNeXt)."
        },
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Data source: a Hub dataset id (scene_parse_150), a local datasets folder, or 'synthetic'."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    data_dir: str | None = field(default=None, metadata={"help": "Local data folder read with --layout."})
    layout: str | None = field(
        default=None, metadata={"help": "On-disk layout of --data_dir (folder, voc, ade20k, ...)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Mask column (default: detected)."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: validation/val/test, else a held-out part)."}
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the train split held out when the source has no validation split."}
    )
    reduce_labels: bool | None = field(
        default=None,
        metadata={
            "help": "Mask value 0 (background/other) becomes ignore_index and k becomes k-1 "
            "(default: the source's own convention, e.g. true for ADE20K, else false)."
        },
    )
    ignore_index: int = field(default=255, metadata={"help": "Label value that is never trained on nor scored."})
    id2label_file: str | None = field(default=None, metadata={"help": "JSON file {id: name} of the final classes."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many evaluation pairs."})
    synthetic_train_size: int = field(default=400, metadata={"help": "Synthetic demo data: training images."})
    synthetic_eval_size: int = field(default=40, metadata={"help": "Synthetic demo data: validation images."})
    crop_size: int = field(default=512, metadata={"help": "Training crop (square) fed to the model."})
    scale_range: list[float] = field(
        default_factory=lambda: [0.5, 2.0], metadata={"help": "Random-resize ratio range around --crop_size."}
    )
    cat_max_ratio: float = field(
        default=0.75, metadata={"help": "Retry random crops where one class covers more than this share (1 = off)."}
    )
    hflip_prob: float = field(default=0.5, metadata={"help": "Horizontal-flip probability in training."})
    photometric: bool = field(default=True, metadata={"help": "Brightness/contrast/saturation/hue distortion."})
    num_preview_images: int = field(default=4, metadata={"help": "Validation images in predictions.png."})
    # --- dataset adapters ---
    label_map: str | None = field(
        default=None,
        metadata={
            "help": "Remap raw mask values: a JSON object {raw: final id} or a path to one; use the ignore index "
            "as the final id to drop a value. Replaces the layout's own table."
        },
    )
    palette_file: str | None = field(
        default=None,
        metadata={
            "help": "Colours of colour-coded RGB masks: JSON {id: [R, G, B]} or 'R G B name' lines (line = id). "
            "Gives the class names too when they are in the file."
        },
    )
    image_dir: str | None = field(
        default=None, metadata={"help": "--layout folder: images folder, relative to --data_dir (default: detected)."}
    )
    mask_dir: str | None = field(
        default=None, metadata={"help": "--layout folder: masks folder, relative to --data_dir (default: detected)."}
    )
    image_suffix: str | None = field(
        default=None, metadata={"help": "--layout folder: end of image stems to strip when pairing, e.g. _img."}
    )
    mask_suffix: str | None = field(
        default=None, metadata={"help": "--layout folder: end of mask stems to strip when pairing, e.g. _gt or _P."}
    )
    split_dir: str | None = field(
        default=None,
        metadata={"help": "--layout folder: folder of NAME.txt split files (one stem per line); default: splits/."},
    )
    pairs_file: str | None = field(
        default=None,
        metadata={"help": "--layout folder: CSV (image,mask[,split]) or JSON list of pairs instead of folders."},
    )
    cityscapes_mask: str = field(
        default="labelIds",
        metadata={"help": "--layout cityscapes: labelIds (mapped to the 19 train ids) or labelTrainIds (as given)."},
    )
    trimap_mapping: str = field(
        default="binary",
        metadata={
            "help": "--layout pets: binary (border ignored), border_as_pet, or three_class (background/pet/border)."
        },
    )
    voc_augmented: bool = field(
        default=False,
        metadata={"help": "--layout voc: train on the SBD-augmented set (SegmentationClassAug/, train_aug.txt)."},
    )
    skip_bad_samples: bool = field(
        default=False,
        metadata={
            "help": "Skip pairs the data check finds broken (and report them) instead of stopping; pairs that "
            "break later in the run are listed in OUTPUT_DIR/skipped_samples.txt."
        },
    )
    check_samples: int = field(
        default=1000,
        metadata={
            "help": "Pairs per split the check before training decodes (-1 = all, 0 = none); file pairing is "
            "always checked. `hfseg doctor` checks everything."
        },
    )
    allow_high_ignore: bool = field(
        default=False,
        metadata={
            "help": "Accept a split whose pixels are mostly ignore_index (over 60%, or over 25% while a named class "
            "has no pixels), which otherwise stops the data check as a class value read as ignore."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream a Hub data set instead of downloading it (IterableDataset; needs --max_steps)."},
    )
    # --- hub ---
    reference_mean_iou: float | None = field(
        default=None,
        metadata={"help": "The recipe's published validation mIoU (0-1); the model card compares the run with it."},
    )
    reference_source: str | None = field(
        default=None, metadata={"help": "Where --reference_mean_iou comes from (paper and table), shown in the card."}
    )
    card_license: str = field(
        default="apache-2.0",
        metadata={"help": "License id in the model card; must respect the base model's and the data's licenses."},
    )


@dataclass
class SegmentationArguments:
    """hfseg's own evaluation, loss and optimizer fields; `SegTrainingArguments` adds `TrainingArguments`'."""

    channels_last: bool = field(
        default=False,
        metadata={"help": "Channels-last memory format for model and images (faster convolutions on GPUs)."},
    )
    eval_bf16: bool = field(
        default=False,
        metadata={"help": "Evaluate under bfloat16 autocast (weights stay fp32; logits are scored in fp32)."},
    )
    # --- evaluation ---
    eval_mode: str = field(
        default="whole",
        metadata={
            "help": "Inference for evaluation: whole (image resized to the model's size, logits upsampled to the "
            "label's size) or slide (image resized keeping its ratio, crop windows, overlapping logits averaged).",
            "choices": ["whole", "slide"],
        },
    )
    eval_scales: list[float] = field(
        default_factory=lambda: [1.0],
        metadata={"help": "Multi-scale TTA: image scales whose softmax outputs are averaged, e.g. 0.75 1.0 1.25."},
    )
    threshold: float = field(
        default=0.5,
        metadata={
            "help": "--task binary: foreground probability above which a pixel is foreground (predictions, "
            "metrics, and the saved two-class head)."
        },
    )
    eval_flip: bool = field(default=False, metadata={"help": "TTA: also average horizontally flipped views."})
    eval_crop_size: int | None = field(
        default=None, metadata={"help": "Slide mode: square window size (default: the model's input size)."}
    )
    eval_stride: int | None = field(
        default=None, metadata={"help": "Slide mode: window stride (default: 2/3 of --eval_crop_size)."}
    )
    eval_short_side: int | None = field(
        default=None,
        metadata={
            "help": "Slide mode: resize images keeping their ratio to this short side before sliding (default: the "
            "model's input size, as mmseg's ADE20K protocol; 0 keeps the original resolution, as for Cityscapes)."
        },
    )
    eval_crop_batch_size: int = field(
        default=8, metadata={"help": "Slide mode: windows per forward pass (bounds inference memory)."}
    )
    # --- training ---
    loss: str | None = field(
        default=None,
        metadata={
            "help": "Training loss: one name or weighted terms, e.g. ce, ce_dice (ce + dice_weight * dice), "
            "ce:1,lovasz:0.5. Multiclass: ce, ohem, focal, dice, tversky, jaccard, lovasz (softmax); binary "
            "(num_labels=1): bce, focal, dice, tversky, jaccard, lovasz (hinge). Default: ce, or bce for a binary "
            "task."
        },
    )
    focal_gamma: float = field(default=2.0, metadata={"help": "Focal loss exponent gamma (0 = plain sigmoid BCE)."})
    focal_alpha: float | None = field(
        default=None, metadata={"help": "Focal loss weight of positive targets (0-1, e.g. 0.25); default: none."}
    )
    tversky_alpha: float = field(default=0.3, metadata={"help": "Tversky loss weight of false positives."})
    tversky_beta: float = field(
        default=0.7, metadata={"help": "Tversky loss weight of false negatives (> alpha favours recall)."}
    )
    ohem_thresh: float | None = field(
        default=0.7,
        metadata={
            "help": "OHEM: keep pixels whose true-class probability is below this (mmseg's thresh); null (in a "
            "recipe): keep the --ohem_min_kept pixels of highest loss."
        },
    )
    ohem_min_kept: int = field(
        default=100000, metadata={"help": "OHEM: pixels kept per image at least (mmseg's min_kept; Cityscapes)."}
    )
    pos_weight: float | None = field(
        default=None, metadata={"help": "Binary bce: weight of foreground pixels (e.g. background/foreground ratio)."}
    )
    class_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Per-class cross-entropy weights, one per class in id order (overrides --class_weighting)."},
    )
    class_weighting: str = field(
        default="none",
        metadata={
            "help": "Compute class weights from the training masks' pixel frequencies: none, inverse (1/freq, "
            "normalised to mean 1) or median_frequency (median freq / freq, SegNet).",
            "choices": ["none", "inverse", "median_frequency"],
        },
    )
    class_weighting_samples: int = field(
        default=500, metadata={"help": "Training masks read to count pixel frequencies for --class_weighting."}
    )
    dice_weight: float = field(default=1.0, metadata={"help": "Weight of the Dice term in --loss ce_dice."})
    aux_loss_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the auxiliary head's loss (UperNet/BEiT/DPT with use_auxiliary_head); "
            "default: the model config's auxiliary_loss_weight (0.4)."
        },
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "Cross-entropy label smoothing (0 = off)."})
    head_lr_mult: float = field(
        default=1.0,
        metadata={
            "help": "Learning-rate multiplier for the decode head (every parameter outside the pretrained "
            "backbone); SegFormer's recipe uses 10."
        },
    )
    layer_decay_rate: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise lr decay over the encoder: layer id (0 = embeddings, N + 1 = block or stage N) "
            "trains at lr x rate ** (top - id); 1.0 = off. The ConvNeXt UperNet recipe uses 0.9 (stage-wise), "
            "BEiT 0.65-0.9 (per block)."
        },
    )
    layer_decay_num_layers: int | None = field(
        default=None,
        metadata={
            "help": "Number of layers for --layer_decay_rate (top = this + 1); default: the encoder's own number "
            "of blocks or stages. mmsegmentation's ConvNeXt configs use 6."
        },
    )
    # --- efficient fine-tuning ---
    freeze_backbone: bool = field(
        default=False,
        metadata={
            "help": "Train the heads only: the encoder's weights frozen and its BatchNorm statistics fixed (eval "
            "mode) for the whole run (see --freeze_backbone_steps)."
        },
    )
    freeze_backbone_steps: int = field(
        default=0,
        metadata={"help": "Freeze the encoder for the first N optimizer steps, then train everything (0 = off)."},
    )


# `hfseg finetune --help` sections, in this order: hfseg's own fields first, Trainer's last. A field not named here
# goes to its dataclass's section (ModelArguments: model, DataArguments: data, SegmentationArguments: optimizer,
# evaluation for its eval_* fields).
TRAINER_SECTION = "Trainer options (transformers.TrainingArguments)"
HELP_SECTIONS = {
    "model": (),
    "data": (),
    "labels": ("reduce_labels", "ignore_index", "id2label_file", "label_map", "palette_file"),
    "augmentation": ("crop_size", "scale_range", "cat_max_ratio", "hflip_prob", "photometric"),
    "loss": (
        "loss",
        "class_weights",
        "class_weighting",
        "class_weighting_samples",
        "dice_weight",
        "aux_loss_weight",
        "label_smoothing",
    ),
    "optimizer": (),
    "evaluation": ("num_preview_images",),
    "model card": ("reference_mean_iou", "reference_source", "card_license"),
    TRAINER_SECTION: (),
}

FINETUNE_USAGE = (
    "%(prog)s [--recipe NAME|PATH] [--FIELD VALUE ...]\n"
    "  every field below is a flag; sections: " + ", ".join(name.split(" (")[0] for name in HELP_SECTIONS)
)


def help_section(name: str) -> str:
    """The `--help` section of a field: HELP_SECTIONS, else its hfseg dataclass's, else Trainer's."""
    for section, names in HELP_SECTIONS.items():
        if name in names:
            return section
    owners = {"model": ModelArguments, "data": DataArguments, "optimizer": SegmentationArguments}
    for section, cls in owners.items():
        if name in {f.name for f in dataclasses.fields(cls)}:
            return "evaluation" if section == "optimizer" and name.startswith("eval_") else section
    return TRAINER_SECTION


class SegArgumentParser(HfArgumentParser):
    """`HfArgumentParser` that puts each flag in its `help_section`, so hfseg's fields come before Trainer's."""

    def _parse_dataclass_field(self, parser, field):
        if not hasattr(self, "_sections"):
            self._sections = {name: self.add_argument_group(name) for name in HELP_SECTIONS}
        help_text = field.metadata.get("help")
        if help_text and re.search(r"(?<!%)%(?![(%])", help_text):  # argparse %-formats help: "60%," breaks --help
            field = copy.copy(field)
            field.metadata = types.MappingProxyType(
                {**field.metadata, "help": re.sub(r"(?<!%)%(?![(%])", "%%", help_text)}
            )
        HfArgumentParser._parse_dataclass_field(self._sections[help_section(field.name)], field)

    def parse_command(self, argv: list[str] | None) -> tuple:
        """`parse_args_into_dataclasses(args=argv)`, a value its dataclass refuses (`__post_init__`) becoming an
        `HfsegError` that points at the command's `--help`."""
        try:
            return self.parse_args_into_dataclasses(args=argv)
        except (ValueError, TypeError) as error:
            raise HfsegError(f"invalid configuration: {error}; see `{self.prog} --help` for the flags") from None


def __getattr__(name: str):
    # `SegTrainingArguments` imports torch (TrainingArguments): loaded on first use, not with this module.
    if name == "SegTrainingArguments":
        from hfseg.training.arguments import SegTrainingArguments

        return SegTrainingArguments
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def argument_classes() -> tuple:
    """(ModelArguments, DataArguments, SegTrainingArguments): what `hfseg finetune` parses."""
    from hfseg.training.arguments import SegTrainingArguments

    return ModelArguments, DataArguments, SegTrainingArguments


# hfseg's own dataclasses: enough to check hfseg's flags and read data flags without importing torch.
OWN_ARGUMENT_CLASSES = (ModelArguments, DataArguments, SegmentationArguments)


def resolve_recipe_path(recipe: str) -> Path:
    """`demo` -> recipes/demo.yaml; a path is taken as it is."""
    path = Path(recipe)
    candidate = path if path.suffix in (".yaml", ".yml") or path.exists() else RECIPES_DIR / f"{recipe}.yaml"
    if not candidate.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise HfsegError(f"recipe '{recipe}' not found (looked for {candidate}); known recipes: {known}")
    return candidate


def read_recipe_yaml(path: Path):
    """Parse a recipe file as plain data: no anchors or aliases, at most `MAX_RECIPE_BYTES`.

    Aliases are refused from the parser's event stream, before any node is built: nested aliases (a "billion
    laughs" file) would otherwise expand to billions of values once the recipe is walked or encoded.
    """
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise HfsegError(
            f"{path} is {size} bytes, larger than any recipe ({MAX_RECIPE_BYTES} bytes at most); "
            "pass a recipe file of field: value lines"
        )
    text = path.read_text()
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                kind = "alias '*" if isinstance(event, yaml.AliasEvent) else "anchor '&"
                raise HfsegError(
                    f"{path} line {event.start_mark.line + 1}: YAML {kind}{anchor}' found; recipes take no anchors "
                    "or aliases: write each value out in full"
                )
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise HfsegError(f"{path} is not valid YAML: {error}") from None


def load_recipe(recipe: str) -> dict:
    """Read a recipe YAML and check every key is a field of the argument dataclasses."""
    path = resolve_recipe_path(recipe)
    values = read_recipe_yaml(path) or {}
    if not isinstance(values, dict):
        raise HfsegError(f"{path} must be a mapping of field: value, found {type(values).__name__}")
    values.pop("recipe", None)  # a resolved config records the recipe it came from
    if values.get("trust_remote_code"):
        raise HfsegError(
            f"recipe {path} sets trust_remote_code: {values['trust_remote_code']!r}, but a recipe cannot allow a "
            "checkpoint's own Python code to run; remove the key and pass --trust_remote_code on the command line"
        )
    known = {f.name for cls in argument_classes() for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise HfsegError(
                f"unknown key '{key}' in recipe {path}; remove it or use a field of `hfseg finetune --help`"
            )
    # A mapping given for a field that takes a JSON string (config_overrides) is encoded; fields that take
    # dicts themselves (accelerator_config, lr_scheduler_kwargs) keep it.
    dict_fields = {f.name for cls in argument_classes() for f in dataclasses.fields(cls) if "dict" in str(f.type)}
    return {
        key: json.dumps(value) if isinstance(value, dict) and key not in dict_fields else value
        for key, value in values.items()
    }


def parse_args(argv: list[str] | None = None) -> tuple:
    """Parse `--recipe` (defaults) and flags (which win) into ModelArguments, DataArguments, SegTrainingArguments."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    known, rest = pre.parse_known_args(argv)
    if not {"-h", "--help"} & set(rest):
        check_own_flags(rest)  # hfseg's own flags fail before torch loads
    parser = SegArgumentParser(argument_classes(), usage=FINETUNE_USAGE)
    parser.add_argument("--recipe", default=None, help="Recipe name (recipes/NAME.yaml) or path to a YAML file.")
    parser.error = _flag_error  # one line instead of argparse's usage text of every TrainingArguments flag
    if known.recipe:
        recipe = load_recipe(known.recipe)
        _check_recipe_types(parser, recipe, resolve_recipe_path(known.recipe))
        parser.set_defaults(**recipe)
    try:
        model_args, data_args, training_args, extra = parser.parse_args_into_dataclasses(
            args=rest + (["--recipe", known.recipe] if known.recipe else []), return_remaining_strings=False
        )
    except (ValueError, TypeError) as error:
        raise HfsegError(f"invalid configuration: {error}; see `hfseg finetune --help` for the flags") from None
    training_args.recipe = known.recipe
    return model_args, data_args, training_args


MULTICLASS_LOSSES = ("ce", "ohem", "focal", "dice", "tversky", "jaccard", "lovasz")
BINARY_LOSSES = ("bce", "focal", "dice", "tversky", "jaccard", "lovasz")
LOSSES = ("ce", "dice", "ce_dice", "ohem", "focal", "tversky", "jaccard", "lovasz", "bce")
TASKS = ("multiclass", "binary")


def default_loss(task: str) -> str:
    """The loss of a run that names none: cross-entropy over the classes, or BCE on a binary head's one logit."""
    return "bce" if task == "binary" else "ce"


def parse_loss(spec: str | None, dice_weight: float = 1.0) -> list[tuple[str, float]]:
    """`ce:1,lovasz:0.5` -> [("ce", 1.0), ("lovasz", 0.5)]; a bare name weighs 1; `ce_dice` is `ce:1,dice:W`
    with W = `dice_weight`; None is the multiclass default, ce."""
    if spec is None:
        spec = default_loss("multiclass")
    terms = []
    for part in spec.replace(" ", "").split(","):
        name, _, weight = part.partition(":")
        if name == "ce_dice" and not weight:
            terms += [("ce", 1.0), ("dice", dice_weight)]
            continue
        if name not in LOSSES or name == "ce_dice":
            raise HfsegError(
                f"--loss '{spec}': unknown loss '{name}'; use one of {', '.join(LOSSES)}, optionally weighted and "
                "comma-separated, e.g. ce:1,lovasz:0.5"
            )
        try:
            value = float(weight) if weight else 1.0
        except ValueError as error:
            raise HfsegError(
                f"--loss '{spec}': weight '{weight}' of {name} is not a number; write e.g. {name}:0.5"
            ) from error
        if value < 0:
            raise HfsegError(f"--loss '{spec}': weight of {name} is {value}; weights must be >= 0")
        terms.append((name, value))
    if len({name for name, _ in terms}) != len(terms):
        raise HfsegError(f"--loss '{spec}' names a loss twice; give each loss once with its weight")
    return terms


def check_own_flags(argv: list[str]) -> tuple:
    """Parse hfseg's own flags (OWN_ARGUMENT_CLASSES) without torch; a wrong value raises `HfsegError`.

    Returns (ModelArguments, DataArguments, SegmentationArguments, the flags left for `TrainingArguments`).
    """
    parser = SegArgumentParser(OWN_ARGUMENT_CLASSES, add_help=False, allow_abbrev=False)
    parser.error = _flag_error
    try:
        parsed = tuple(parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True))
    except (ValueError, TypeError) as error:
        raise HfsegError(f"invalid configuration: {error}; see `hfseg finetune --help` for the flags") from None
    parse_loss(parsed[2].loss, parsed[2].dice_weight)  # a wrong --loss spec is named before torch loads
    return parsed


def parse_data_args(argv: list[str]) -> DataArguments:
    """The DataArguments of `argv`; loads torch only for a recipe or Trainer flags, which need the full parser."""
    _, data_args, _, rest = check_own_flags(argv)
    if rest:  # --recipe or flags of TrainingArguments: check them all as `hfseg finetune` would
        _, data_args, _ = parse_args(argv)
    return data_args


def _flag_error(message: str):
    raise HfsegError(f"{message}; see `hfseg finetune --help` for the flags and their types")


def _check_recipe_types(parser: argparse.ArgumentParser, recipe: dict, path: Path) -> None:
    """argparse does not convert non-string defaults: check them here so a wrong type names its key."""
    for action in parser._actions:
        if action.dest not in recipe or action.type is None:
            continue
        value = recipe[action.dest]
        if isinstance(value, dict):
            continue
        values = value if isinstance(value, list) and action.nargs in ("+", "*") else [value]
        for item in values:
            if item is None:
                continue
            try:
                converted = action.type(item) if isinstance(item, str) else action.type(str(item))
            except (TypeError, ValueError, argparse.ArgumentTypeError):
                raise HfsegError(
                    f"recipe {path}: '{action.dest}' has value {item!r} of the wrong type; "
                    f"expected {getattr(action.type, '__name__', action.type)}"
                ) from None
            if action.choices and converted not in action.choices:
                raise HfsegError(f"recipe {path}: '{action.dest}' must be one of {list(action.choices)}, got {item!r}")


def _plain(value):
    """A YAML-safe copy: enums become their value, containers are walked, other objects become str."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if value is None or type(value) in (int, float, str, bool):
        return value
    return str(value)


def save_resolved_config(output_dir: str | Path, *argument_objects) -> Path:
    """Write every field of the parsed dataclasses to `output_dir/hfseg_config.yaml`."""
    resolved = {}
    for arguments in argument_objects:
        values = arguments.to_dict() if hasattr(arguments, "to_dict") else dataclasses.asdict(arguments)  # Trainer's
        for name, value in values.items():
            if name.startswith("_") or name.endswith("token"):  # never write credentials
                continue
            resolved[name] = _plain(value)
    resolved["recipe"] = getattr(argument_objects[-1], "recipe", None)
    path = Path(output_dir) / RESOLVED_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(resolved, sort_keys=False))
    return path
