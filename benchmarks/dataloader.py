"""Training data pipeline throughput: hfseg's torchvision v2 pipeline vs the HF guide's, against a B0 training step.

Both read the same `datasets.Dataset` of ADE20K-sized JPEG images and PNG masks (150 classes + 0 = "other",
reduced), through a `torch.utils.data.DataLoader` with 1 and 2 workers, and produce 512x512 inputs:
- ours: `attach_transform` + `TrainTransform(512)` (random scale 0.5-2, cat-max-ratio crop, flip, photometric
  distortion, normalise) + `collate_segmentation`;
- guide (transformers docs, tasks/semantic_segmentation): `ColorJitter(0.25, 0.25, 0.25, 0.1)` on each image,
  then the image processor (`SegformerImageProcessor(do_reduce_labels=True)`: resize to 512, normalise) per
  batch via `set_transform`, `default_data_collator`.
The first batch (worker start-up) is not timed. The B0 training step (SegformerConfig(), 150 labels, 512x512,
batch 2, forward + backward + AdamW, one warm-up step) gives the rate in images/s the pipeline has to sustain.

    python benchmarks/dataloader.py          # 48 images, batch 4, workers 1 and 2, 512 crops
    python benchmarks/dataloader.py --quick  # CI-sized
"""

from __future__ import annotations

from common import (
    TINY_SEGFORMER,
    base_parser,
    child_main,
    format_table,
    machine_info,
    machine_line,
    ratio,
    run_configurations,
    write_results,
)

NAME = "dataloader"


def build_dataset(num_images: int, base_size: tuple[int, int], num_labels: int = 150):
    """ADE20K-like `datasets.Dataset`: JPEG `image`, PNG `annotation` with 0 = other and 1..num_labels classes."""
    import io

    from common import ade_like_sample
    from datasets import Dataset, Features, Image
    from PIL import Image as PILImage

    images, annotations = [], []
    for index in range(num_images):
        image, labels = ade_like_sample(index, num_labels + 1, base_size)
        buffer = io.BytesIO()
        PILImage.fromarray(image).save(buffer, format="JPEG", quality=90)
        images.append({"bytes": buffer.getvalue(), "path": None})
        buffer = io.BytesIO()
        PILImage.fromarray(labels).save(buffer, format="PNG")
        annotations.append({"bytes": buffer.getvalue(), "path": None})
    features = Features({"image": Image(), "annotation": Image()})
    return Dataset.from_dict({"image": images, "annotation": annotations}, features=features)


def guide_transform(image_processor):
    """The guide's `train_transforms`, as written there."""
    from torchvision.transforms import ColorJitter

    jitter = ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25, hue=0.1)

    def train_transforms(example_batch):
        images = [jitter(x) for x in example_batch["image"]]
        labels = [x for x in example_batch["annotation"]]  # noqa: C416 (the guide's code)
        inputs = image_processor(images, labels)
        return inputs

    return train_transforms


def measure_pipeline(config: dict) -> dict:
    import time

    import torch
    from transformers import SegformerImageProcessor, default_data_collator

    from hfseg.data.collate import collate_segmentation
    from hfseg.data.labels import LabelSpec
    from hfseg.data.preprocess import attach_transform
    from hfseg.data.transforms import TrainTransform

    torch.manual_seed(0)
    dataset = build_dataset(config["num_images"], tuple(config["base_size"]))
    crop = config["crop_size"]
    if config["method"] == "ours":
        spec = LabelSpec({i: f"class_{i}" for i in range(150)}, 255, reduce_labels=True)
        dataset = attach_transform(dataset, "image", "annotation", spec, TrainTransform(crop))

        def collate(examples):
            return collate_segmentation(examples, 255)
    else:
        processor = SegformerImageProcessor(do_reduce_labels=True, size={"height": crop, "width": crop})
        dataset.set_transform(guide_transform(processor))
        collate = default_data_collator
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config["batch_size"],
        shuffle=True,
        num_workers=config["workers"],
        collate_fn=collate,
        persistent_workers=False,
    )
    started = time.perf_counter()
    first = None
    images = 0
    for batch in loader:
        if first is None:
            first = time.perf_counter()
            shape = list(batch["pixel_values"].shape)
            continue
        images += len(batch["pixel_values"])
    elapsed = time.perf_counter() - first
    return {
        "method": config["method"],
        "workers": config["workers"],
        "images_timed": images,
        "images_per_s": round(images / elapsed, 2),
        "first_batch_s": round(first - started, 2),
        "batch_shape": shape,
    }


def measure_training_step(config: dict) -> dict:
    """Seconds per B0 training step on random 512x512 batches (the rate the pipeline has to feed)."""
    import time

    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    overrides = TINY_SEGFORMER if config["model"] == "tiny" else {}
    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=150, **overrides)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5)
    size, batch_size = config["crop_size"], config["train_batch_size"]
    pixel_values = torch.randn(batch_size, 3, size, size)
    labels = torch.randint(0, 150, (batch_size, size, size))
    times = []
    for _ in range(config["warmup"] + config["steps"]):
        started = time.perf_counter()
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    seconds = sorted(times[config["warmup"] :])[len(times[config["warmup"] :]) // 2]
    return {
        "method": "train_step",
        "model": config["model"],
        "batch_size": batch_size,
        "s_per_step": round(seconds, 3),
        "images_per_s": round(batch_size / seconds, 2),
    }


def run_configuration(config: dict) -> dict:
    return measure_training_step(config) if config["method"] == "train_step" else measure_pipeline(config)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=None, help="Images in the data set (default 48).")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="DataLoader worker counts to try.")
    args = parser.parse_args()
    if args.child:
        child_main(run_configuration, args.child)
        return

    if args.quick:
        base = {"num_images": 8, "base_size": [64, 86], "crop_size": 32, "batch_size": 2, "model": "tiny"}
        workers = args.workers or [1]
        step = {"steps": 1, "warmup": 1, "train_batch_size": 2}
    else:
        base = {
            "num_images": args.num_images or 48,
            "base_size": [512, 683],
            "crop_size": 512,
            "batch_size": 4,
            "model": "b0",
        }
        workers = args.workers or [1, 2]
        step = {"steps": 1, "warmup": 1, "train_batch_size": 2}
    info = machine_info()
    print(machine_line(info), flush=True)
    configs = [{**base, **step, "method": "train_step"}]
    configs += [{**base, "method": method, "workers": count} for count in workers for method in ("ours", "guide")]
    results = run_configurations(f"{NAME}.py", configs, isolated=not args.quick)
    for config, result in zip(configs, results, strict=True):
        result.setdefault("method", config["method"])
        result.setdefault("workers", config.get("workers"))
    train = results[0]
    train_rate = train.get("images_per_s")
    rows = []
    for count in workers:
        by_method = {r["method"]: r for r in results[1:] if r["workers"] == count}
        ours, guide = by_method["ours"].get("images_per_s"), by_method["guide"].get("images_per_s")
        rows.append([count, ours, guide, ratio(ours, guide), train_rate, ratio(ours, train_rate)])
    headers = ["workers", "ours img/s", "guide img/s", "ours/guide", f"{base['model']} train img/s", "ours/train"]
    setting = (
        f"{base['num_images']} images ~{base['base_size']}, {base['crop_size']} px inputs, "
        f"batch {base['batch_size']}; "
        f"train step (batch {train.get('batch_size')}) {train.get('s_per_step')} s"
    )
    print(f"\n{NAME}: {setting}")
    print(format_table(headers, rows))
    print("ours/train > 1: the pipeline produces images faster than the model consumes them (not the bottleneck).")
    print(machine_line(info))
    table = {"headers": headers, "rows": rows}
    path = write_results(NAME, args, {"machine": info, "settings": base, "results": results, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
