"""Full fine-tuning vs --freeze_backbone vs --peft lora: peak training memory, seconds per step and the share of
parameters trained, on the same model, data and batch, each method in a fresh process.

Memory: on CPU the process's peak RSS and its growth over the RSS right after the model is built (what training
adds: activations kept for backward, gradients, optimizer state); with `--device cuda`, torch's peak allocated
memory. A step is the time between the ends of two optimizer steps; the first is dropped (warm-up).

    python benchmarks/efficient_finetune.py                 # SegFormer-b0 and UperNet on a DINOv2-base ViT, CPU
    python benchmarks/efficient_finetune.py --device cuda   # the same on a GPU
    python benchmarks/efficient_finetune.py --quick         # CI-sized
"""

from __future__ import annotations

import statistics

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

NAME = "efficient_finetune"
METHODS = ("full", "freeze_backbone", "lora")


# DINOv2-base sizes (ViT-B/14: 768 wide, 12 blocks, 12 heads), random init; UperNet as the
# dinov2_small_upernet_frozen_ade recipe builds it (512-channel decoder, auxiliary head, layers 3 6 9 12).
DINOV2_BASE_UPERNET = {
    "backbone_config": {"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                        "patch_size": 14, "image_size": 518, "drop_path_rate": 0.0},
    "hidden_size": 512,
    "auxiliary_channels": 256,
}  # fmt: skip


def build(model_name: str, num_labels: int):
    import json

    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from hfseg.config import ModelArguments
    from hfseg.models.build import build_model

    if model_name == "dinov2_base_upernet":
        args = ModelArguments(model_type="upernet", config_overrides=json.dumps(DINOV2_BASE_UPERNET))
        return build_model(args, {i: str(i) for i in range(num_labels)})
    overrides = TINY_SEGFORMER if model_name == "tiny" else {}
    return SegformerForSemanticSegmentation(SegformerConfig(num_labels=num_labels, drop_path_rate=0.0, **overrides))


def run_configuration(config: dict) -> dict:
    import tempfile
    import time

    import torch
    from transformers import TrainerCallback

    from hfseg.config import SegTrainingArguments
    from hfseg.data.collate import collate_segmentation
    from hfseg.models.lora import apply_lora, parameter_counts
    from hfseg.training.trainer import SegTrainer

    torch.manual_seed(0)
    device, size, batch_size, num_labels = config["device"], config["crop_size"], config["batch_size"], 150
    steps = config["steps"] + 1
    rss_before_model = current_rss_mb()  # libraries loaded, no model yet
    model = build(config["model"], num_labels)
    if config["method"] == "lora":
        model = apply_lora(model, config["lora_r"], config["lora_r"], 0.0)
    generator = torch.Generator().manual_seed(0)
    samples = [
        {
            "pixel_values": torch.randn(3, size, size, generator=generator),
            "labels": torch.randint(0, num_labels, (size, size), generator=generator),
        }
        for _ in range(steps * batch_size)
    ]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        args = SegTrainingArguments(
            output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=6e-5,
            eval_strategy="no", save_strategy="no", report_to="none", use_cpu=device == "cpu", seed=0,
            freeze_backbone=config["method"] == "freeze_backbone", logging_steps=1000,
        )  # fmt: skip
        trainer = SegTrainer(
            model=model, args=args, train_dataset=samples, data_collator=collate_segmentation, callbacks=[clock]
        )
        counts = parameter_counts(trainer.model, config["method"])
        rss_before = current_rss_mb()
        if device == "cuda":
            trainer.model.to("cuda")
            torch.cuda.reset_peak_memory_stats()
            allocated_before = torch.cuda.memory_allocated() / 2**20
        trainer.train()
    times = [later - earlier for earlier, later in zip(clock.ends[:-1], clock.ends[1:], strict=True)]
    result = {
        **config,
        "trainable": counts["trainable"],
        "total": counts["total"],
        "trainable_share": round(counts["share"], 4),
        "s_per_step": round(statistics.median(times), 4),
        "rss_before_model_mb": rss_before_model,
        "rss_before_training_mb": rss_before,
    }
    if device == "cuda":
        result["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        result["cuda_training_mb"] = round(result["cuda_peak_mb"] - allocated_before, 1)
    return result


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.child:
        child_main(run_configuration, args.child)
        return
    if args.quick:
        models = [{"model": "tiny", "crop_size": 32, "batch_size": 2, "steps": 2}]
    else:
        models = [
            {"model": "b0", "crop_size": 256, "batch_size": 2, "steps": 3},
            {"model": "dinov2_base_upernet", "crop_size": 224, "batch_size": 2, "steps": 2},  # 224 = 16 patches
        ]
    configurations = [
        {**model, "method": method, "device": args.device, "lora_r": 32} for model in models for method in METHODS
    ]
    info = machine_info()
    print(machine_line(info), flush=True)
    # --quick: one process for all (seconds, not minutes); its peak RSS is shared, not comparable per method.
    results = run_configurations(f"{NAME}.py", configurations, isolated=not args.quick)
    for result in results:
        if "peak_rss_mb" in result:
            result["training_rss_mb"] = round(result["peak_rss_mb"] - result["rss_before_training_mb"], 1)
            # What the model and its training hold (weights, gradients, optimizer state, activations), the CPU
            # counterpart of a GPU's peak allocated memory: the process's peak minus the libraries' share.
            result["model_training_rss_mb"] = round(result["peak_rss_mb"] - result["rss_before_model_mb"], 1)
    memory_key = "cuda_peak_mb" if args.device == "cuda" else "model_training_rss_mb"
    growth_key = "cuda_training_mb" if args.device == "cuda" else "training_rss_mb"
    rows = []
    for result in results:
        full = next(
            r for r in results if r.get("model") == result.get("model") and r.get("method") == "full"
        )  # the baseline of the same model and batch
        rows.append(
            [
                f"{result['config']['model'] if 'error' in result else result['model']} "
                f"{result.get('crop_size')}px bs{result.get('batch_size')}",
                result.get("method", result.get("error")),
                result.get("trainable_share"),
                result.get("peak_rss_mb"),
                result.get(memory_key),
                ratio(result.get(memory_key), full.get(memory_key)),
                result.get(growth_key),
                ratio(result.get(growth_key), full.get(growth_key)),
                result.get("s_per_step"),
                ratio(result.get("s_per_step"), full.get("s_per_step")),
            ]
        )
    headers = [
        "model", "method", "trained share", "process peak MB", "model+training MB", "/ full", "training MB",
        "training / full", "s/step", "/ full",
    ]  # fmt: skip
    print(
        f"\n{NAME}: hfseg SegTrainer, {args.device}, 150 labels, AdamW; model+training MB = peak minus memory "
        "before the model was built (on a GPU: peak allocated); training MB = peak minus memory with the model built"
    )
    print(format_table(headers, rows))
    print(machine_line(info))
    path = write_results(
        NAME, args, {"machine": info, "results": results, "table": {"headers": headers, "rows": rows}}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
