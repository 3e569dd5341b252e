"""Where users train: one GPU, SegFormer-B0/B2 and UperNet-ConvNeXt-T at 512 px, fp32 vs bf16 vs bf16+compile.

Three measurements, each in a fresh child process, written to one JSON:
- train: images/s and peak GPU memory of SegTrainer vs a bare loop (same weights, AdamW, SegmentationLoss, the
  same collate and pinned DataLoader), batch 8 and 16, after `warmup` steps.
- inference: images/s at ADE20K's test size (512 x 683 after the short side is resized to 512), batch 1,
  whole and slide (512 crops, stride 341), fp32 and bf16, next to mmsegmentation's published V100 FPS.
- eval_memory: peak device memory of `SegTrainer.evaluate` over N and 4N ADE-sized images: it should be flat.

Models are built from configs (random init, no Hub download). A time budget (`--budget_s`, default 420 s) skips
what does not fit and says so, so a full run stays under 8 minutes on one GPU.

    python benchmarks/gpu.py          # on a GPU machine
    python benchmarks/gpu.py --quick  # CI-sized, CPU: tiny models, 32 px, no compile
"""

from __future__ import annotations

import time

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

NAME = "gpu"
NUM_LABELS = 150
LEARNING_RATE = 6e-5
ADE_TEST_SIZE = (512, 683)

#: mmsegmentation's published ADE20K inference FPS (V100, fp32, whole image at 512 x 2048 scale, batch 1).
MMSEG_ADE20K_FPS_V100 = {"segformer-b0": 51.3, "segformer-b1": 47.7, "segformer-b2": 30.9, "upernet-r50": 23.4}

SEGFORMER_SIZES = {
    "segformer-b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "segformer-b1": {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "segformer-b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def build_model(name: str, num_labels: int = NUM_LABELS):
    """A random-init model from its config: segformer-b0/b1/b2, upernet-convnext-t, upernet-r50, tiny-*."""
    from transformers import (
        ConvNextConfig,
        ResNetConfig,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    if name.startswith("segformer") or name == "tiny-segformer":
        sizes = TINY_SEGFORMER if name == "tiny-segformer" else SEGFORMER_SIZES[name]
        config = SegformerConfig(num_labels=num_labels, drop_path_rate=0.0, **sizes)
        return SegformerForSemanticSegmentation(config)
    if name == "upernet-convnext-t":
        backbone = ConvNextConfig(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768], out_features=STAGES)
        config = UperNetConfig(backbone_config=backbone, num_labels=num_labels, hidden_size=512)
    elif name == "upernet-r50":
        backbone = ResNetConfig(out_features=STAGES)  # the default ResNetConfig is ResNet-50
        config = UperNetConfig(backbone_config=backbone, num_labels=num_labels, hidden_size=512)
    elif name == "tiny-upernet":
        backbone = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], out_features=STAGES)
        config = UperNetConfig(
            backbone_config=backbone, num_labels=num_labels, hidden_size=16, auxiliary_channels=8, pool_scales=[1, 2]
        )
    else:
        raise ValueError(f"unknown model {name}")
    return UperNetForSemanticSegmentation(config)


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device) -> float | None:
    """Peak device memory since the last reset (None on CPU: see the process's peak RSS instead)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None


class RepeatedSamples:
    """`length` training samples cycling over `unique` random (image, blocky labels) pairs."""

    def __init__(self, size: int, length: int, unique: int = 16, num_labels: int = NUM_LABELS):
        import torch

        generator = torch.Generator().manual_seed(0)
        cell = max(size // 16, 1)
        self.samples = [
            {
                "pixel_values": torch.randn(3, size, size, generator=generator),
                "labels": torch.randint(0, num_labels, (size // cell, size // cell), generator=generator)
                .repeat_interleave(cell, 0)
                .repeat_interleave(cell, 1),
            }
            for _ in range(min(unique, length))
        ]
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.samples[index % len(self.samples)]


# --- child side ------------------------------------------------------------------------------------------------


def run_configuration(config: dict) -> dict:
    kind = config["kind"]
    measure = {"train": measure_training, "inference": measure_inference, "eval_memory": measure_eval_memory}[kind]
    rows = []
    for item in config["items"]:
        if time.time() > config["deadline"]:
            rows.append({**item, "skipped": "time budget (--budget_s) spent"})
            continue
        try:
            rows.append({**item, **measure(item, config)})
        except Exception as error:  # one configuration failing (e.g. out of memory) must not hide the others
            rows.append({**item, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"})
        print(rows[-1], flush=True)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"kind": kind, "device": device, "rows": rows}


def measure_training(item: dict, config: dict) -> dict:
    """Images/s and peak memory of one (model, batch, precision, method) training run."""
    import functools
    import tempfile

    import torch
    from transformers import TrainerCallback

    from hfseg.config import SegTrainingArguments
    from hfseg.data.collate import collate_segmentation
    from hfseg.models.losses import SegmentationLoss
    from hfseg.training.trainer import SegTrainer

    device = _device()
    warmup, steps, batch_size = config["warmup"], config["steps"], item["batch_size"]
    bf16, compile_model = item["precision"] in ("bf16", "bf16_compile"), item["precision"] == "bf16_compile"
    samples = RepeatedSamples(config["crop_size"], (warmup + steps) * batch_size)
    collate = functools.partial(collate_segmentation, ignore_index=255)
    torch.manual_seed(0)
    model = build_model(item["model"]).train()
    loss_fn = SegmentationLoss("ce")
    _reset_peak(device)
    marks: list[float] = []

    if item["method"] == "bare":
        model.to(device)
        forward = torch.compile(model) if compile_model else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
        loader = torch.utils.data.DataLoader(
            samples, batch_size=batch_size, shuffle=True, collate_fn=collate, pin_memory=device.type == "cuda"
        )
        for step, batch in enumerate(loader, start=1):
            pixel_values = batch["pixel_values"].to(device, non_blocking=True)
            labels = batch["labels"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = forward(pixel_values=pixel_values).logits
            loss = loss_fn(logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step in (warmup, warmup + steps):
                _synchronize(device)
                marks.append(time.perf_counter())
    else:

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step in (warmup, warmup + steps):
                    _synchronize(device)
                    marks.append(time.perf_counter())

        with tempfile.TemporaryDirectory() as output_dir:
            args = SegTrainingArguments(
                output_dir=output_dir,
                max_steps=warmup + steps,
                per_device_train_batch_size=batch_size,
                learning_rate=LEARNING_RATE,
                weight_decay=0.0,
                lr_scheduler_type="constant",
                max_grad_norm=1.0,
                eval_strategy="no",
                save_strategy="no",
                logging_steps=warmup + steps,
                report_to="none",
                bf16=bf16,
                torch_compile=compile_model,
                use_cpu=device.type == "cpu",
                seed=0,
            )
            trainer = SegTrainer(
                model=model,
                args=args,
                train_dataset=samples,
                data_collator=collate,
                loss_fn=loss_fn,
                callbacks=[Clock()],
            )
            trainer.train()
    seconds = marks[1] - marks[0]
    return {
        "images_per_s": round(steps * batch_size / seconds, 2),
        "s_per_step": round(seconds / steps, 4),
        "peak_memory_mb": _peak_mb(device),
    }


def measure_inference(item: dict, config: dict) -> dict:
    """Images/s of hfseg's evaluation forward (`iter_logits_at_sizes` + argmax), batch 1, at ADE20K test size."""
    import torch

    from hfseg.evaluation.inference import InferenceOptions, iter_logits_at_sizes

    device = _device()
    size = tuple(config["image_size"])
    options = InferenceOptions(mode=item["mode"], crop_size=config["slide_crop"], stride=config["slide_stride"])
    torch.manual_seed(0)
    model = build_model(item["model"]).eval().to(device)
    image = torch.randn(1, 3, *size, device=device)
    _reset_peak(device)
    start = None
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=item["precision"] == "bf16"):
        for index in range(config["warmup"] + config["images"]):
            if index == config["warmup"]:
                _synchronize(device)
                start = time.perf_counter()
            for logits in iter_logits_at_sizes(model, image, [size], options=options):
                logits.argmax(0)
        _synchronize(device)
    seconds = time.perf_counter() - start
    return {"images_per_s": round(config["images"] / seconds, 2), "peak_memory_mb": _peak_mb(device)}


def measure_eval_memory(item: dict, config: dict) -> dict:
    """Peak device memory (RSS on CPU) of `SegTrainer.evaluate` over N ADE-sized images of varying size."""
    import functools
    import tempfile

    import torch
    import torch.nn.functional as F
    from common import ade_like_sample, current_rss_mb

    from hfseg.config import SegTrainingArguments
    from hfseg.data.collate import collate_segmentation
    from hfseg.evaluation.metrics import TrainerSegmentationMetrics
    from hfseg.training.trainer import SegTrainer

    device = _device()
    short_side = config["image_size"][0]
    samples = []
    for index in range(item["n"]):
        image, labels = ade_like_sample(index, NUM_LABELS, base_size=tuple(config["image_size"]))
        pixel_values = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
        scale = short_side / min(image.shape[:2])
        pixel_values = F.interpolate(pixel_values, scale_factor=scale, mode="bilinear", align_corners=False)[0]
        samples.append({"pixel_values": pixel_values, "labels": torch.from_numpy(labels).long()})
    torch.manual_seed(0)
    model = build_model(item["model"]).eval()
    _reset_peak(device)
    with tempfile.TemporaryDirectory() as output_dir:
        args = SegTrainingArguments(
            output_dir=output_dir,
            per_device_eval_batch_size=config["eval_batch_size"],
            report_to="none",
            use_cpu=device.type == "cpu",
            eval_bf16=item["precision"] == "bf16",
        )
        trainer = SegTrainer(
            model=model,
            args=args,
            eval_dataset=samples,
            data_collator=functools.partial(collate_segmentation, ignore_index=255),
            compute_metrics=TrainerSegmentationMetrics({i: str(i) for i in range(NUM_LABELS)}),
        )
        started = time.perf_counter()
        metrics = trainer.evaluate()
    return {
        "eval_s": round(time.perf_counter() - started, 2),
        "eval_mean_iou": metrics["eval_mean_iou"],
        "peak_memory_mb": _peak_mb(device) if device.type == "cuda" else current_rss_mb(),
    }


# --- parent side -----------------------------------------------------------------------------------------------


def plan(quick: bool, budget_s: float) -> list[dict]:
    """The children to run, most wanted first; every child stops starting new items at the deadline."""
    deadline = time.time() + budget_s
    if quick:
        train_models, batches, precisions = ["tiny-segformer"], [2], ["fp32", "bf16"]
        inference_models, image_size = ["tiny-segformer"], [32, 43]
        common = {"crop_size": 32, "warmup": 1, "steps": 1, "deadline": deadline}
        inference = {"warmup": 1, "images": 2, "slide_crop": 32, "slide_stride": 21}
        eval_sizes, eval_model = [2, 4], "tiny-segformer"
    else:
        train_models, batches = ["segformer-b0", "segformer-b2", "upernet-convnext-t"], [8, 16]
        precisions, image_size = ["fp32", "bf16", "bf16_compile"], list(ADE_TEST_SIZE)
        inference_models = ["segformer-b0", "segformer-b1", "segformer-b2", "upernet-r50"]
        common = {"crop_size": 512, "warmup": 5, "steps": 15, "deadline": deadline}
        inference = {"warmup": 5, "images": 30, "slide_crop": 512, "slide_stride": 341}
        eval_sizes, eval_model = [16, 64], "segformer-b0"
    children = []
    for model in train_models:
        items = [
            {"model": model, "batch_size": batch, "precision": precision, "method": method}
            for batch in batches
            for precision in precisions
            for method in ("ours", "bare")
        ]
        children.append({"kind": "train", "items": items, **common})
    items = [
        {"model": model, "mode": mode, "precision": precision}
        for model in inference_models
        for mode in ("whole", "slide")
        for precision in ("fp32", "bf16")
    ]
    children.append({"kind": "inference", "items": items, "image_size": image_size, **inference, "deadline": deadline})
    items = [{"model": eval_model, "n": n, "precision": "fp32"} for n in eval_sizes]
    children.append(
        {"kind": "eval_memory", "items": items, "image_size": image_size, "eval_batch_size": 4, "deadline": deadline}
    )
    return children


def tables(results: list[dict]) -> dict:
    """Rows of the three printed tables, from the children's results."""
    rows = [row for result in results for row in result.get("rows", [])]
    train, inference, memory = [], [], []
    by_key = {}
    for row in rows:
        if "method" in row:
            by_key[(row["model"], row["batch_size"], row["precision"], row["method"])] = row
    for (model, batch, precision, method), row in by_key.items():
        if method != "ours":
            continue
        bare = by_key.get((model, batch, precision, "bare"), {})
        fp32 = by_key.get((model, batch, "fp32", "ours"), {})
        train.append(
            [
                f"{model} bs{batch}",
                precision,
                row.get("images_per_s", row.get("error") or row.get("skipped")),
                bare.get("images_per_s"),
                ratio(row.get("images_per_s"), bare.get("images_per_s")),
                ratio(row.get("images_per_s"), fp32.get("images_per_s")),
                row.get("peak_memory_mb"),
                bare.get("peak_memory_mb"),
            ]
        )
    for row in rows:
        if "mode" in row:
            anchor = MMSEG_ADE20K_FPS_V100.get(row["model"])
            inference.append(
                [
                    row["model"],
                    row["mode"],
                    row["precision"],
                    row.get("images_per_s", row.get("error") or row.get("skipped")),
                    anchor,
                    ratio(row.get("images_per_s"), anchor),
                    row.get("peak_memory_mb"),
                ]
            )
        elif "n" in row:
            memory.append([row["model"], row["n"], row.get("peak_memory_mb", row.get("error") or row.get("skipped"))])
    return {
        "train": {
            "headers": [
                "model",
                "precision",
                "ours img/s",
                "bare img/s",
                "ours/bare",
                "vs fp32",
                "ours MB",
                "bare MB",
            ],
            "rows": train,
        },
        "inference": {
            "headers": ["model", "mode", "precision", "img/s", "mmseg V100 FPS", "ours/anchor", "peak MB"],
            "rows": inference,
        },
        "eval_memory": {"headers": ["model", "N images", "peak MB"], "rows": memory},
    }


def _has_cuda() -> bool:
    """Asked of a child process, so the parent never imports torch."""
    import subprocess
    import sys

    command = [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"]
    return subprocess.run(command, capture_output=True, text=True).stdout.strip() == "True"


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--budget_s",
        type=float,
        default=None,
        help="Stop starting new measurements after this (default 420; none with --quick).",
    )
    args = parser.parse_args()
    if args.child:
        child_main(run_configuration, args.child)
        return
    info = machine_info()
    print(machine_line(info), flush=True)
    if not args.quick and not _has_cuda():
        path = write_results(NAME, args, {"machine": info, "skipped": "no CUDA device; run on a GPU, or use --quick"})
        print(f"no CUDA device: GPU figures need a GPU (benchmarks/gpu.py --quick runs the CPU path); wrote {path}")
        return
    results = run_configurations(
        f"{NAME}.py",
        plan(args.quick, args.budget_s or (float("inf") if args.quick else 420.0)),
        isolated=not args.quick,
    )
    device = next((result.get("device") for result in results if result.get("device")), None)
    info["device"] = device or info["device"]
    printed = tables(results)
    for title, table in printed.items():
        print(f"\n{NAME} {title}")
        print(format_table(table["headers"], table["rows"]))
    rows = [row for table in printed.values() for row in table["rows"]]
    print(machine_line(info))
    payload = {
        "machine": info,
        "anchors": {"mmsegmentation_ade20k_fps_v100": MMSEG_ADE20K_FPS_V100},
        "results": results,
        "tables": printed,
        "table": {"headers": ["rows"], "rows": rows},
    }
    path = write_results(NAME, args, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
