"""Training-step overhead: seconds per step of SegTrainer vs a bare PyTorch loop, same model, data, optimizer, batch.

Both sides: the same initial weights, AdamW (lr 6e-5, no weight decay, constant schedule), gradient clipping at
1.0 (Trainer's default, so the bare loop does it too), `collate_segmentation`, a shuffled DataLoader with no
workers over the same pre-transformed samples. Runs alternate (bare, ours, bare, ours, ...) so a drift in the
machine's load hits both; a step is the time between the ends of two consecutive optimizer steps, data loading
included; the first `--warmup` steps of each run are dropped.

    python benchmarks/train_overhead.py          # B0 (SegformerConfig()) 256 px batch 2, a tiny model (worst case),
                                                 # and a small Mask2Former (its own loss on per-class masks)
    python benchmarks/train_overhead.py --quick  # CI-sized
    python benchmarks/train_overhead.py --models mask2former  # only the Mask2Former configuration
"""

from __future__ import annotations

import statistics

from common import (
    SMALL_MASK2FORMER,
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

NAME = "train_overhead"
LEARNING_RATE = 6e-5


def run_configuration(config: dict) -> dict:
    """All rounds of one model configuration, in this (fresh) process."""
    import tempfile
    import time

    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        TrainerCallback,
    )

    from hfseg.config import SegTrainingArguments
    from hfseg.data.collate import collate_segmentation
    from hfseg.training.trainer import SegTrainer

    torch.manual_seed(0)
    size, batch_size, num_labels = config["crop_size"], config["batch_size"], config["num_labels"]
    steps = config["warmup"] + config["steps"]
    # Mask2Former: the bare loop calls the model with its own targets and takes its own loss, as its model card does.
    mask_classification = config["model"] == "mask2former"
    if mask_classification:
        model_class = Mask2FormerForUniversalSegmentation
        model_config = Mask2FormerConfig(num_labels=num_labels, **SMALL_MASK2FORMER)
        model_config.backbone_config.image_size = size
    else:
        model_class = SegformerForSemanticSegmentation
        overrides = TINY_SEGFORMER if config["model"] == "tiny" else {}
        model_config = SegformerConfig(num_labels=num_labels, drop_path_rate=0.0, **overrides)
    initial_state = model_class(model_config).state_dict()
    generator = torch.Generator().manual_seed(0)
    samples = [
        {
            "pixel_values": torch.randn(3, size, size, generator=generator),
            "labels": torch.randint(0, num_labels, (size // 8, size // 8), generator=generator)
            .repeat_interleave(8, 0)
            .repeat_interleave(8, 1),
        }
        for _ in range(steps * batch_size)
    ]

    def fresh_model():
        model = model_class(model_config)
        model.load_state_dict(initial_state)
        return model.train()

    def collate(examples):
        return collate_segmentation(examples, 255, mask_targets=mask_classification)

    def bare_loss(model, batch):
        if mask_classification:
            targets = {"mask_labels": batch["mask_labels"], "class_labels": batch["class_labels"]}
            return model(pixel_values=batch["pixel_values"], **targets).loss
        return model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss

    def bare_loop() -> list[float]:
        torch.manual_seed(1)
        model = fresh_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
        loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=True, collate_fn=collate)
        ends = [time.perf_counter()]
        for batch in loader:
            loss = bare_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            ends.append(time.perf_counter())
        return _intervals(ends, config["warmup"])

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    def seg_trainer(output_dir) -> list[float]:
        torch.manual_seed(1)
        clock = StepClock()
        args = SegTrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=LEARNING_RATE,
            weight_decay=0.0,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
            use_cpu=True,
            seed=1,
        )
        trainer = SegTrainer(
            model=fresh_model(), args=args, train_dataset=samples, data_collator=collate, callbacks=[clock]
        )
        trainer.train()
        return _intervals(clock.ends, config["warmup"])

    times = {"bare": [], "ours": []}
    with tempfile.TemporaryDirectory() as output_dir:
        for _ in range(config["rounds"]):
            times["bare"] += bare_loop()
            times["ours"] += seg_trainer(output_dir)
    return {
        "model": config["model"],
        "crop_size": size,
        "batch_size": batch_size,
        "steps_measured_per_method": len(times["ours"]),
        "bare_s_per_step": round(statistics.median(times["bare"]), 4),
        "ours_s_per_step": round(statistics.median(times["ours"]), 4),
        "bare_mean_s_per_step": round(statistics.fmean(times["bare"]), 4),
        "ours_mean_s_per_step": round(statistics.fmean(times["ours"]), 4),
        "bare_step_times": [round(t, 4) for t in times["bare"]],
        "ours_step_times": [round(t, 4) for t in times["ours"]],
    }


def _intervals(ends: list[float], warmup: int) -> list[float]:
    """Durations of the steps after the first `warmup` (ends[0] is the start of step 1)."""
    return [later - earlier for earlier, later in zip(ends[:-1], ends[1:], strict=True)][warmup:]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="Alternating bare/ours runs per configuration.")
    parser.add_argument(
        "--models", nargs="+", default=None, help="Only these configurations (b0, tiny, mask2former); default: all."
    )
    args = parser.parse_args()
    if args.child:
        child_main(run_configuration, args.child)
        return

    if args.quick:
        configurations = [{"model": "tiny", "crop_size": 32, "batch_size": 2, "steps": 3, "warmup": 1, "rounds": 1}]
    else:
        configurations = [
            {"model": "b0", "crop_size": 256, "batch_size": 2, "steps": 3, "warmup": 1, "rounds": 2},
            {"model": "tiny", "crop_size": 64, "batch_size": 8, "steps": 15, "warmup": 3, "rounds": 2},
            {"model": "mask2former", "crop_size": 128, "batch_size": 2, "steps": 5, "warmup": 2, "rounds": 2},
        ]
        configurations = [c for c in configurations if args.models is None or c["model"] in args.models]
    info = machine_info()
    print(machine_line(info), flush=True)
    configurations = [{**c, "num_labels": 150, "rounds": args.rounds or c["rounds"]} for c in configurations]
    results = run_configurations(f"{NAME}.py", configurations, isolated=not args.quick)
    rows = []
    for config, result in zip(configurations, results, strict=True):
        overhead = ratio(result.get("ours_s_per_step"), result.get("bare_s_per_step"))
        rows.append(
            [
                f"{config['model']} {config['crop_size']}px bs{config['batch_size']}",
                result.get("steps_measured_per_method", result.get("error")),
                result.get("bare_s_per_step"),
                result.get("ours_s_per_step"),
                overhead,
                None if overhead is None else f"{(overhead - 1) * 100:+.1f}%",
            ]
        )
    headers = ["model", "steps each", "bare s/step", "SegTrainer s/step", "ours/bare", "overhead"]
    print(f"\n{NAME}: median seconds per training step, 150 labels, AdamW, CPU (Mask2Former: its own loss)")
    print(format_table(headers, rows))
    print(machine_line(info))
    path = write_results(
        NAME, args, {"machine": info, "results": results, "table": {"headers": headers, "rows": rows}}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
