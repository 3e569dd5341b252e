"""`hfseg app`: a Gradio web demo of a saved model, or the Hugging Face Space that serves one.

hfseg app RUN [--host 127.0.0.1 --port 7860] [--examples FILE|DIR]
hfseg app RUN --write_space DIR [--examples FILE|DIR]

Upload an image (or pick an example: `--examples`, else the first validation images of a run on the embedded
synthetic data): the overlay (opacity slider), a legend of every class's colour and name,
each class's share of the image, and the index mask `hfseg predict` would write, to download; whole or slide
inference, with or without flip TTA; the metrics of the model card. The app makes no network call of its own.
"""

from __future__ import annotations

import html
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hfseg.errors import HfsegError, strip_debug, user_errors_exit
from hfseg.evaluation.inference import INFERENCE_MODES, InferenceOptions, eval_transform_for, predict_masks
from hfseg.evaluation.predict import list_inputs, model_palette, read_image, save_mask
from hfseg.evaluation.visualize import overlay
from hfseg.hub.card import CARD_NAME
from hfseg.hub.space import write_space
from hfseg.models.build import load_for_inference, processor_input_size

logger = logging.getLogger("hfseg")

INSTALL_HINT = "pip install 'hfseg[app]'"
CARD_METRICS = ("mean_iou", "mean_accuracy", "overall_accuracy")


@dataclass
class AppArguments:
    model: str = field(metadata={"help": "Saved model directory (a finished run) or Hub id (also positional)."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0: every interface)."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    examples: str | None = field(
        default=None, metadata={"help": "An image or a folder of images offered as examples (e.g. validation images)."}
    )
    write_space: str | None = field(
        default=None,
        metadata={"help": "Write a Hugging Face Space (app.py, requirements.txt, README.md, the model) to DIR; exit."},
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own Python code to run."})


def import_gradio():
    """gradio, with its usage analytics and version check off; missing -> `HfsegError` naming the extra."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as error:
        raise HfsegError(f"hfseg app needs gradio ({error}); install it with {INSTALL_HINT}") from None
    return gradio


class Segmenter:
    """A saved model and its image processor, segmenting one image at a time as `hfseg predict` does."""

    def __init__(self, model: str, revision: str = "main", trust_remote_code: bool = False, device: str | None = None):
        self.model, self.processor = load_for_inference(model, revision, trust_remote_code)
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.id2label = {int(index): name for index, name in self.model.config.id2label.items()}
        self.palette = model_palette(self.model.config)

    def mask(self, image, mode: str = "whole", flip: bool = False) -> np.ndarray:
        """PIL image -> (H, W) class ids at the image's size."""
        options = InferenceOptions(mode=mode, flip=flip).with_input_size(processor_input_size(self.processor))
        (mask,) = predict_masks(self.model, [image], eval_transform_for(self.processor, options), options=options)
        return mask.numpy()


def class_areas(mask: np.ndarray, id2label: dict[int, str]) -> list[list]:
    """[[class name, pixels, share in %], ...] of the classes present in `mask`, largest first."""
    counts = np.bincount(mask.reshape(-1), minlength=len(id2label))
    rows = [[id2label.get(index, str(index)), int(count), round(100 * count / mask.size, 2)] for index, count in
            enumerate(counts) if count]  # fmt: skip
    return sorted(rows, key=lambda row: -row[1])


def legend_html(id2label: dict[int, str], palette: np.ndarray) -> str:
    """Every class as a colour swatch and its name."""
    items = "".join(
        f'<span class="hfseg-legend-item" style="display:inline-flex;align-items:center;margin:0 12px 4px 0">'
        f'<span style="width:14px;height:14px;border-radius:3px;margin-right:5px;border:1px solid #8886;'
        f'background:rgb({r},{g},{b})"></span>{html.escape(id2label[index])}</span>'
        for index, (r, g, b) in zip(sorted(id2label), palette.tolist(), strict=False)
    )
    return f'<div id="hfseg-legend">{items}</div>'


def card_metrics(model: str) -> str:
    """The headline metrics of the model card (README.md of the run or Hub repo), as Markdown."""
    from huggingface_hub import ModelCard

    location = Path(model) / CARD_NAME if Path(model).is_dir() else model
    try:
        card = ModelCard.load(location)
    except Exception as error:  # no card, or the Hub out of reach: the demo works without it, and says so
        logger.warning("no model card metrics for %s (%s: %s)", model, type(error).__name__, error)
        return f"No model card found for `{model}`."
    results = {result.metric_type: result for result in card.data.eval_results or []}
    shown = [results[name] for name in CARD_METRICS if name in results]
    if not shown:
        return f"The model card of `{model}` lists no metrics."
    first = shown[0]
    where = f"{first.dataset_name or first.dataset_type}, {first.dataset_split or 'validation'}"
    rows = "".join(f"| {result.metric_type} | {result.metric_value:.4f} |\n" for result in shown)
    return f"**Model card metrics** ({where}):\n\n| metric | value |\n|---|---|\n{rows}"


def example_images(examples: str | None) -> list[Path]:
    """The images of `--examples` (a file or a folder, searched as `hfseg predict --input` is)."""
    if not examples:
        return []
    images, _ = list_inputs(Path(examples), Path(tempfile.gettempdir()))
    if not images:
        raise HfsegError(f"--examples {examples}: no image files found (extensions: .png, .jpg, .tif, ...)")
    return images


def synthetic_validation_examples(model: str, folder: Path, count: int = 4) -> list[Path]:
    """The first `count` validation images of a run trained on the embedded synthetic data (the same scenes its
    evaluation used), saved in `folder`; none for other models."""
    import yaml

    from hfseg.config import RESOLVED_CONFIG_NAME

    config_path = Path(model) / RESOLVED_CONFIG_NAME
    if not config_path.is_file():
        return []
    config = yaml.safe_load(config_path.read_text()) or {}
    if config.get("dataset_name") != "synthetic":
        return []
    from hfseg.data.synthetic import make_synthetic_dataset

    count = min(count, int(config.get("synthetic_eval_size") or count))
    validation = make_synthetic_dataset(1, count, seed=int(config.get("seed") or 0))["validation"]
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"validation_{index}.png" for index in range(count)]
    for row, path in zip(validation, paths, strict=True):
        row["image"].save(path)
    return paths


def build_demo(
    model: str,
    examples: list[str | Path] | None = None,
    revision: str = "main",
    trust_remote_code: bool = False,
    device: str | None = None,
):
    """The Gradio Blocks app for `model` (not launched). Its `segment` endpoint takes (image path, mode, flip,
    opacity) and returns (overlay, class areas, index mask PNG).

    Args:
        examples: images offered as examples; None: the validation images of a run on the synthetic data, if it is.
    """
    gr = import_gradio()
    segmenter = Segmenter(model, revision, trust_remote_code, device)
    workdir = Path(tempfile.mkdtemp(prefix="hfseg-app-"))
    if examples is None:
        examples = synthetic_validation_examples(model, workdir / "examples")

    def segment(image_path, mode, flip, alpha):
        if not image_path:
            raise gr.Error("upload an image first")
        image = read_image(Path(image_path))
        mask = segmenter.mask(image, mode, bool(flip))
        mask_path = Path(tempfile.mkdtemp(dir=workdir)) / Path(image_path).with_suffix(".png").name
        save_mask(mask, segmenter.palette, mask_path)
        return (
            overlay(image, mask, segmenter.palette, float(alpha)),
            class_areas(mask, segmenter.id2label),
            str(mask_path),
            (image, mask),
        )

    def segment_new_image(image_path, mode, flip, alpha):  # an upload, an example picked, or the image cleared
        return segment(image_path, mode, flip, alpha) if image_path else (None, None, None, None)

    def reblend(alpha, result):
        if result is None:
            return None
        image, mask = result
        return overlay(image, mask, segmenter.palette, float(alpha))

    name = model.rstrip("/").split("/")[-1]
    with gr.Blocks(title=f"{name} · hfseg", analytics_enabled=False) as demo:
        gr.Markdown(f"## {html.escape(name)}: semantic segmentation\n{len(segmenter.id2label)} classes, `{model}`")
        with gr.Row():
            with gr.Column():
                image_input = gr.Image(type="filepath", label="image", sources=["upload", "clipboard"])
                with gr.Row():
                    mode = gr.Radio(list(INFERENCE_MODES), value="whole", label="inference")
                    flip = gr.Checkbox(value=False, label="flip TTA")
                run = gr.Button("Segment", variant="primary", elem_id="hfseg-segment")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[image_input], label="examples")
            with gr.Column():
                overlay_output = gr.Image(type="pil", format="png", label="overlay", elem_id="hfseg-overlay")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="opacity", elem_id="hfseg-opacity")
                gr.HTML(legend_html(segmenter.id2label, segmenter.palette))
        with gr.Row():
            areas = gr.Dataframe(
                headers=["class", "pixels", "share (%)"], label="area per class", interactive=False,
                elem_id="hfseg-areas",
            )  # fmt: skip
            mask_file = gr.File(label="index mask (PNG, pixel value = class id)", elem_id="hfseg-mask")
        gr.Markdown(card_metrics(model))
        result = gr.State(None)
        inputs, outputs = [image_input, mode, flip, alpha], [overlay_output, areas, mask_file, result]
        run.click(segment, inputs, outputs, api_name="segment")
        image_input.change(segment_new_image, inputs, outputs, api_name=False)
        alpha.change(reblend, [alpha, result], overlay_output, api_name=False)  # no model call: the mask is kept
    return demo


def serve(args: AppArguments, prevent_thread_lock: bool = False):
    """Build the app for `args.model` and serve it on `args.host:args.port`."""
    examples = example_images(args.examples) if args.examples else None
    demo = build_demo(args.model, examples, args.revision, args.trust_remote_code, args.device)
    try:
        demo.launch(
            server_name=args.host, server_port=args.port, prevent_thread_lock=prevent_thread_lock, share=False,
            show_error=True, inbrowser=False, quiet=prevent_thread_lock,
        )  # fmt: skip
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        raise HfsegError(
            f"--host {args.host} --port {args.port}: cannot serve there ({str(error).split('. ')[0]}); pass a free "
            "--port (or stop what holds it) and an address of this machine as --host"
        ) from None
    return demo


def parse_app_args(argv: list[str]) -> AppArguments:
    from transformers import HfArgumentParser

    if argv and not argv[0].startswith("-"):  # `hfseg app RUN ...`
        argv = ["--model", argv[0], *argv[1:]]
    parser = HfArgumentParser(AppArguments)
    parser.prog = "hfseg app"
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


@user_errors_exit
def main(argv: list[str] | None = None):
    args = parse_app_args(strip_debug(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.write_space:
        from hfseg.hub.push import files_to_push

        local = Path(args.model).is_dir()
        model_files = [Path(args.model) / name for name in files_to_push(args.model)] if local else None
        examples = example_images(args.examples)
        if not examples and local:
            examples = synthetic_validation_examples(args.model, Path(tempfile.mkdtemp(prefix="hfseg-examples-")))
        written = write_space(args.write_space, args.model if not local else Path(args.model).resolve().name,
                              model_files=model_files, examples=examples)  # fmt: skip
        print(f"wrote a Hugging Face Space to {args.write_space} ({len(written)} files); try it: cd "
              f"{args.write_space} && python app.py")  # fmt: skip
        return written
    import_gradio()  # before the model loads: a missing gradio is said first
    return serve(args)


if __name__ == "__main__":
    main()
