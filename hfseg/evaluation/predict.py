"""`hfseg predict`: segment an image or a folder of images with a saved model.

hfseg predict --model DIR --input FILE|DIR --output OUT [--eval_mode slide --eval_flip] [--batch_size 8]

Writes OUT/<stem>.png, the index mask at the image's own size (pixel value = class id; a palette PNG
coloured with the model's palette, 16-bit grayscale above 256 classes; with --label_values original, the raw
values of the training masks as grayscale, or their colours for colour-coded masks), and OUT/overlays/<stem>.png.
Folders keep their sub-folder structure. Every file is accounted for: files that are not images are
listed, images that cannot be read are named and make the command fail after the others are written.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from hfseg.config import SegArgumentParser, SegTrainingArguments
from hfseg.data.bands import is_high_bit_depth, read_bands, read_rgb_bands
from hfseg.data.checks import read_problem
from hfseg.data.labels import LabelSpec, load_rgb
from hfseg.data.preprocess import is_band_input
from hfseg.deploy.onnx_model import BACKEND_HELP, load_for_backend
from hfseg.errors import HfsegError, strip_debug, user_errors_exit
from hfseg.evaluation.inference import InferenceOptions, eval_transform_for, predict_logits
from hfseg.evaluation.visualize import make_palette, overlay
from hfseg.models.build import processor_input_size

logger = logging.getLogger("hfseg")

OVERLAY_DIR = "overlays"
#: PNG text chunk that marks the files `hfseg predict` writes, so a later run never takes them for inputs.
PREDICTION_TAG = ("Software", "hfseg predict")


@dataclass
class PredictArguments:
    model: str | None = field(default=None, metadata={"help": "Saved model directory or Hub id."})
    input: str | None = field(
        default=None, metadata={"help": "An image file or a folder of images (searched recursively)."}
    )
    output: str = field(default="outputs/predictions", metadata={"help": "Folder for the masks and overlays."})
    batch_size: int = field(default=4, metadata={"help": "Images per forward pass."})
    overlays: bool = field(
        default=True, metadata={"help": "Also write OUT/overlays/<stem>.png, the masks over the images."}
    )
    overlay_alpha: float = field(default=0.5, metadata={"help": "Opacity of the mask colours in the overlays."})
    label_values: str = field(
        default="class_ids",
        metadata={
            "help": "Pixel values of the written masks: class_ids (0..num_labels-1, palette PNG) or original (the "
            "raw values of the training masks as grayscale PNG, their colours for colour-coded masks), from the "
            "label handling saved with the model: --label_map inverted, reduce_labels class k -> k + 1; where the "
            "map sends several raw values to one class, the smallest of those it lists is written.",
            "choices": ["class_ids", "original"],
        },
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    backend: str = field(default="pytorch", metadata=BACKEND_HELP)
    revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own Python code to run."})


def inference_arguments_class():
    """A dataclass of the `--eval_*` inference fields of `SegTrainingArguments` (one definition, two tools)."""
    hints = typing.get_type_hints(SegTrainingArguments)
    names = {f"eval_{name}" for name in InferenceOptions.__dataclass_fields__}
    fields = [
        (f.name, hints[f.name], field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))
        for f in dataclasses.fields(SegTrainingArguments)
        if f.name in names
    ]
    return dataclasses.make_dataclass("InferenceArguments", fields)


def parse_predict_args(argv: list[str] | None = None):
    parser = SegArgumentParser((PredictArguments, inference_arguments_class()))
    parser.prog = "hfseg predict"
    predict_args, inference_args = parser.parse_command(argv)
    if not predict_args.model or not predict_args.input:
        raise HfsegError("pass --model DIR (a saved model) and --input FILE|DIR (the images to segment)")
    if predict_args.batch_size < 1:
        raise HfsegError(f"--batch_size is {predict_args.batch_size}; it must be at least 1")
    return predict_args, InferenceOptions.from_arguments(inference_args)


def is_prediction(path: Path) -> bool:
    """Whether `path` is a mask or overlay that `hfseg predict` wrote (its PNG carries `PREDICTION_TAG`)."""
    if path.suffix.lower() != ".png":
        return False
    try:
        with Image.open(path) as image:
            return image.info.get(PREDICTION_TAG[0]) == PREDICTION_TAG[1]
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return False  # an unreadable file is an input: it is named when it is read


def list_inputs(input_path: Path, output_dir: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under `input_path`, sorted. Hidden files are left out, and so are the masks and
    overlays an earlier `hfseg predict` wrote (an `--output` inside `--input`; their count is logged). Where
    `--output` is, matters not: `check_inputs_kept` refuses to write over an input."""
    if not input_path.exists():
        raise HfsegError(f"--input {input_path} does not exist; pass an image file or a folder of images")
    if input_path.is_file():
        return [input_path], []
    extensions = {extension.lower() for extension in Image.registered_extensions()}
    images, others, predictions = [], [], 0
    for path in sorted(input_path.rglob("*")):
        relative = path.relative_to(input_path)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if is_prediction(path):
            predictions += 1
            continue
        (images if path.suffix.lower() in extensions else others).append(path)
    if predictions:
        logger.warning(
            "%d files under --input %s are masks or overlays written by hfseg predict and were not segmented",
            predictions,
            input_path,
        )
    return images, others


def output_names(images: list[Path], input_path: Path) -> list[Path]:
    """<relative folder>/<stem>.png for each image; two images that would share a name are an error."""
    root = input_path if input_path.is_dir() else input_path.parent
    names = [path.relative_to(root).with_suffix(".png") for path in images]
    seen: dict[Path, Path] = {}
    for path, name in zip(images, names, strict=True):
        if name in seen:
            raise HfsegError(
                f"{seen[name]} and {path} would both be written as {name}; rename one of them or predict the folders "
                "separately"
            )
        seen[name] = path
    return names


def check_inputs_kept(images: list[Path], names: list[Path], output_dir: Path, overlays: bool) -> None:
    """Refuse before anything is written when a mask or an overlay would be written over one of the input images."""
    inputs = {path.resolve(): path for path in images}
    for name in names:
        for target in [output_dir / name] + ([output_dir / OVERLAY_DIR / name] if overlays else []):
            if target.resolve() in inputs:
                raise HfsegError(
                    f"--output {output_dir} would write {target} over the input image {inputs[target.resolve()]}; "
                    "choose an --output folder outside the input folder (e.g. a new folder next to it)"
                )


def read_image(path: Path, num_channels: int | None = None):
    """Any image file -> RGB PIL image (EXIF orientation applied; first frame); a 16-bit or float image as training
    reads it, (3, H, W) in its own type, scaled at normalisation by the type's maximum (`read_rgb_bands`); for a
    model of `num_channels` other than 3, its (C, H, W) bands in their own type (`read_bands`)."""
    try:
        if is_band_input(num_channels):
            return read_bands(path, num_channels)
        if is_high_bit_depth(path):
            return read_rgb_bands(path)
        image = Image.open(path)
        image.load()
    except Image.DecompressionBombError as error:  # Pillow refuses before decoding: one image, not the batch
        raise HfsegError(
            f"{path}: too large to decode ({error}); downscale or tile it (e.g. 4096 px tiles) and predict the parts"
        ) from None
    except PermissionError as error:
        raise HfsegError(str(read_problem(error, str(path)))) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:  # tifffile's errors are ValueErrors
        raise HfsegError(f"{path}: cannot read the image ({error})") from None
    return load_rgb(image)


def save_mask(mask: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """(H, W) class ids -> palette PNG (up to 256 classes) or 16-bit grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(palette) <= 256:
        image = Image.fromarray(mask.astype(np.uint8), mode="P")
        image.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    else:
        image = Image.fromarray(mask.astype(np.uint16))
    save_tagged(image, path)


def save_tagged(image: Image.Image, path: Path) -> None:
    """Save a PNG carrying `PREDICTION_TAG`."""
    info = PngImagePlugin.PngInfo()
    info.add_text(*PREDICTION_TAG)
    image.save(path, pnginfo=info)


def save_raw_mask(values: np.ndarray, path: Path) -> None:
    """(H, W) raw mask values -> 8-bit grayscale PNG (16-bit above 255); (H, W, 3) colours -> RGB PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wide = values.ndim == 2 and values.max(initial=0) > 255
    Image.fromarray(values.astype(np.uint16 if wide else np.uint8)).save(path)


def original_values(config, model: str) -> np.ndarray:
    """(num_labels,) class id -> the raw mask value it was trained from (`LabelSpec.raw_values`), or
    (num_labels, 3) its colour for a model trained on colour-coded masks (the saved palette).

    Raises:
        HfsegError: the model was saved without its label handling, or a class has no raw value.
    """
    spec = LabelSpec.from_config(config, f"{model}/config.json")
    if spec is None:
        raise HfsegError(
            f"--label_values original: {model} was saved without its label handling (a run before hfseg saved it, "
            "or a model from elsewhere), so its raw mask values are unknown; use --label_values class_ids"
        )
    try:
        raw_values = spec.raw_values()
    except HfsegError as error:
        raise HfsegError(f"--label_values original: {error}; use --label_values class_ids") from None
    if not spec.palette:
        return raw_values
    missing = [int(raw) for raw in raw_values if int(raw) not in spec.palette]
    if missing:
        raise HfsegError(
            f"--label_values original: raw values {missing[:8]} have no colour in the palette saved in "
            f"{model}/config.json; use --label_values class_ids"
        )
    return np.array([spec.palette[int(raw)] for raw in raw_values], dtype=np.uint8)


def model_palette(config) -> np.ndarray:
    """The model's palette (`config.palette`, when it has one) or hfseg's deterministic one."""
    palette = getattr(config, "palette", None)
    if palette is not None and len(palette) >= config.num_labels:
        return np.asarray(palette, dtype=np.uint8)[: config.num_labels]
    return make_palette(config.num_labels)


@user_errors_exit
def main(argv: list[str] | None = None) -> list[Path]:
    predict_args, options = parse_predict_args(strip_debug(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from tqdm.auto import tqdm

    model, processor = load_for_backend(
        predict_args.model, predict_args.backend, predict_args.revision, predict_args.trust_remote_code
    )
    device = predict_args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    options = options.with_input_size(processor_input_size(processor))
    transform = eval_transform_for(processor, options)
    palette = model_palette(model.config)
    num_channels = getattr(model.config, "num_channels", None)  # other than 3: images read with their own bands
    raw_values = original_values(model.config, predict_args.model) if predict_args.label_values == "original" else None

    input_path, output_dir = Path(predict_args.input), Path(predict_args.output)
    images, others = list_inputs(input_path, output_dir)
    if others:
        shown = ", ".join(str(path) for path in others[:5]) + (" ..." if len(others) > 5 else "")
        logger.warning("%d files are not images (by extension) and were not segmented: %s", len(others), shown)
    if not images:
        raise HfsegError(f"--input {input_path}: no image files found (extensions: .png, .jpg, .tif, ...)")
    names = output_names(images, input_path)
    check_inputs_kept(images, names, output_dir, predict_args.overlays)  # never write over an input
    written, failed = [], []
    progress = tqdm(total=len(images), desc="predict", unit="img")
    for start in range(0, len(images), predict_args.batch_size):
        batch = []
        for path, name in zip(
            images[start : start + predict_args.batch_size],
            names[start : start + predict_args.batch_size],
            strict=True,
        ):
            try:
                batch.append((read_image(path, num_channels), name))
            except HfsegError as error:
                failed.append(str(error))
        if batch:
            logits = predict_logits(model, [image for image, _ in batch], transform, options)
            for (image, name), image_logits in zip(batch, logits, strict=True):
                mask = image_logits.argmax(0).cpu().numpy()
                if raw_values is None:
                    save_mask(mask, palette, output_dir / name)
                else:
                    save_raw_mask(raw_values[mask], output_dir / name)
                if predict_args.overlays:
                    overlay_path = output_dir / OVERLAY_DIR / name
                    overlay_path.parent.mkdir(parents=True, exist_ok=True)
                    save_tagged(overlay(image, mask, palette, predict_args.overlay_alpha), overlay_path)
                written.append(output_dir / name)
        progress.update(min(predict_args.batch_size, len(images) - start))
    progress.close()
    logger.info(
        "wrote %d masks to %s%s (inference: %s)", len(written), output_dir,
        f" and overlays to {output_dir / OVERLAY_DIR}" if predict_args.overlays else "", options.describe(),
    )  # fmt: skip
    if failed:
        raise HfsegError(f"{len(failed)} of {len(images)} images could not be read: " + "; ".join(failed[:10]))
    return written


if __name__ == "__main__":
    main()
