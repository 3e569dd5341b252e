"""Inference throughput and memory: hfseg's batched prediction vs a loop over `pipeline("image-segmentation")`.

The same random-init SegFormer (B0 sizes, 150 labels), saved once per process to a temporary directory with
its image processor (no download), predicts the same ADE20K-sized images:
- ours: `hfseg.evaluation.inference.predict_masks` in batches (whole-image mode: one forward pass at the
  processor's size, logits upsampled to each image's size, argmax) -> one (H, W) class map per image;
- baseline: `pipeline("image-segmentation", model=<dir>)` called once per image, as its documentation shows ->
  one PIL mask per class present.
Each (method, mode) runs in a fresh process; one warm-up image is not timed.

    python benchmarks/inference.py          # B0, 16 images ~512x683, batch 8
    python benchmarks/inference.py --quick  # CI-sized
"""

from __future__ import annotations

from common import (
    TINY_SEGFORMER,
    base_parser,
    child_main,
    current_rss_mb,
    format_table,
    machine_info,
    machine_line,
    ratio,
    run_configurations,
    write_results,
)

NAME = "inference"

# --- inference modes ------------------------------------------------------------------------------------------
# `hfseg.evaluation.inference.InferenceOptions` fields for each measured mode: whole image; sliding windows
# (image resized keeping its ratio to the model's input size on the short side, windows of that size, stride 2/3); and
# multi-scale + flip TTA on the whole image (6 views).
MODES: dict[str, dict] = {
    "whole": {},
    "slide": {"mode": "slide"},
    "tta": {"scales": (0.75, 1.0, 1.25), "flip": True},
}


def detected_modes() -> dict[str, dict]:
    """The modes to measure (kept as a function: the tests and `main` ask for it)."""
    return dict(MODES)


def save_model(directory: str, config: dict) -> None:
    """A random-init SegFormer + its image processor, as `save_pretrained` writes them."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    id2label = {i: f"class_{i}" for i in range(config["num_labels"])}
    overrides = TINY_SEGFORMER if config["model"] == "tiny" else {}
    model_config = SegformerConfig(num_labels=len(id2label), id2label=id2label, **overrides)
    SegformerForSemanticSegmentation(model_config).save_pretrained(directory)
    size = config["input_size"]
    SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(directory)


def predict_with_hfseg(directory: str, images, batch_size: int, mode: dict):
    """What `hfseg predict` does: load model + processor, the eval transform for the inference options, batch.

    Args:
        mode: `InferenceOptions` fields (`{}` = whole image; `{"mode": "slide"}`; TTA scales/flip).
    """
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from hfseg.evaluation.inference import InferenceOptions, eval_transform_for, predict_masks
    from hfseg.models.build import processor_input_size

    model = AutoModelForSemanticSegmentation.from_pretrained(directory).eval()
    processor = AutoImageProcessor.from_pretrained(directory)
    options = InferenceOptions(**mode).with_input_size(processor_input_size(processor))
    transform = eval_transform_for(processor, options)

    def run(chunk):
        return predict_masks(model, chunk, transform, batch_size=batch_size, options=options)

    return run


def predict_with_pipeline(directory: str):
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=directory, device="cpu")

    def run(chunk):
        return [segmenter(image) for image in chunk]

    return run


def run_configuration(config: dict) -> dict:
    import tempfile
    import time

    import torch
    from common import ade_like_sample
    from PIL import Image

    images = [
        Image.fromarray(ade_like_sample(index, config["num_labels"], tuple(config["base_size"]))[0])
        for index in range(config["num_images"] + 1)
    ]
    with tempfile.TemporaryDirectory() as directory:
        save_model(directory, config)
        if config["method"] == "pipeline":
            run = predict_with_pipeline(directory)
        else:
            run = predict_with_hfseg(directory, images, config["batch_size"], mode_kwargs(config))
        with torch.inference_mode():
            run(images[:1])  # warm-up, not timed
            setup_rss = current_rss_mb()
            started = time.perf_counter()
            outputs = run(images[1:])
            elapsed = time.perf_counter() - started
    assert len(outputs) == config["num_images"]
    return {
        "method": config["method"],
        "mode": config.get("mode", "whole"),
        "images": config["num_images"],
        "seconds": round(elapsed, 2),
        "images_per_s": round(config["num_images"] / elapsed, 3),
        "setup_rss_mb": setup_rss,
    }


def mode_kwargs(config: dict) -> dict:
    """`InferenceOptions` fields for the configuration's mode."""
    return detected_modes()[config.get("mode", "whole")]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=None, help="Images to predict (default 16).")
    parser.add_argument("--batch_size", type=int, default=8, help="hfseg prediction batch size.")
    args = parser.parse_args()
    if args.child:
        child_main(run_configuration, args.child)
        return

    if args.quick:
        base = {"model": "tiny", "num_labels": 10, "input_size": 64, "base_size": [64, 86], "num_images": 4}
    else:
        base = {
            "model": "b0",
            "num_labels": 150,
            "input_size": 512,
            "base_size": [512, 683],
            "num_images": args.num_images or 16,
        }
    base["batch_size"] = args.batch_size
    info = machine_info()
    print(machine_line(info), flush=True)
    modes = detected_modes()
    configs = [{**base, "method": "pipeline"}] + [{**base, "method": "hfseg", "mode": mode} for mode in modes]
    results = run_configurations(f"{NAME}.py", configs, isolated=not args.quick)
    for config, result in zip(configs, results, strict=True):
        result.setdefault("method", config["method"])
        result.setdefault("mode", config.get("mode", "whole"))
    baseline = results[0]
    rows = []
    for result in results:
        name = "pipeline loop" if result.get("method") == "pipeline" else f"hfseg {result.get('mode')}"
        rows.append(
            [
                name,
                result.get("images_per_s", result.get("error")),
                ratio(result.get("images_per_s"), baseline.get("images_per_s")),
                result.get("peak_rss_mb"),
                ratio(result.get("peak_rss_mb"), baseline.get("peak_rss_mb")),
            ]
        )
    headers = ["method", "images/s", "speed vs pipeline", "peak RSS MB", "memory vs pipeline"]
    missing = [mode for mode in ("slide", "tta") if mode not in modes]
    setting = (
        f"SegFormer {base['model']}, {base['num_labels']} labels, {base['num_images']} images ~{base['base_size']}, "
        f"input {base['input_size']}, hfseg batch {args.batch_size}"
    )
    print(f"\n{NAME}: {setting}")
    print(format_table(headers, rows))
    if missing:
        print(f"not measured (not in hfseg.evaluation.inference yet): {', '.join(missing)}")
    print(machine_line(info))
    payload = {"machine": info, "settings": base, "modes": list(modes), "modes_missing": missing, "results": results}
    path = write_results(NAME, args, {**payload, "table": {"headers": headers, "rows": rows}})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
