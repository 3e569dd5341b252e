"""Binary masks two ways: one sigmoid logit (`--task binary`, bce) vs two softmax channels (`--task multiclass`, ce).

Both runs of a seed share everything else: the ISBI EM pairs (0 = membrane, 255 = cell, mapped to 0/1; one of the
four pairs held out by the seed), the SegFormer config and its initial weights, crops, augmentations, optimizer and
steps. Training crops are 256 px from the images at 0.75x-1.25x their 512 px size, so the thin membranes stay
visible; evaluation is at 512 px. The figure is the held-out foreground (cell) IoU at the labels' 512x512
resolution, from `hfseg finetune`'s own eval_results.json; the membrane IoU is reported too, since a model that
calls every pixel a cell already scores about 0.75 cell IoU (`trivial` flags a run whose membrane IoU stays under
0.05). The spread of the paired gaps over seeds is the noise the two heads are compared against.

    python benchmarks/binary_vs_softmax.py          # 300 steps, seeds 0-4 (about 1 min per run on 2 quiet cores)
    python benchmarks/binary_vs_softmax.py --quick  # CI-sized: tiny model, 2 steps, one seed
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from common import (
    ROOT,
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

NAME = "binary_vs_softmax"

#: Small enough for a few hundred CPU steps, large enough to learn membranes (about 0.4M parameters).
SMALL_SEGFORMER = {
    "hidden_sizes": [16, 32, 64, 128],
    "depths": [1, 1, 1, 1],
    "num_attention_heads": [1, 1, 2, 4],
    "decoder_hidden_size": 64,
    "drop_path_rate": 0.0,
    "classifier_dropout_prob": 0.0,
}
TASKS = {"binary": ("binary", "bce"), "softmax": ("multiclass", "ce")}
#: Below this held-out membrane IoU a run has learnt (nearly) nothing but "cell everywhere".
TRIVIAL_MEMBRANE_IOU = 0.05


def em_dir() -> Path:
    shared = Path(os.environ.get("HFSEG_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return shared / "isbi_em" / "train"


def run_configuration(config: dict) -> dict:
    """One `hfseg finetune` run on the EM pairs, in this process; returns its held-out metrics."""
    import tempfile
    import time

    from hfseg.finetune import main as finetune

    task, loss = TASKS[config["head"]]
    with tempfile.TemporaryDirectory() as folder:
        id2label_file = Path(folder) / "id2label.json"
        id2label_file.write_text(json.dumps({"0": "membrane", "1": "cell"}))
        output_dir = Path(folder) / "run"
        started = time.perf_counter()
        finetune(
            [
                "--model_type", "segformer", "--config_overrides", json.dumps(config["overrides"]),
                "--image_size", str(config["size"]), "--crop_size", str(config["crop_size"]),
                "--scale_range", *(str(ratio) for ratio in config["scale_range"]),
                "--data_dir", str(em_dir()), "--layout", "folder", "--label_map", '{"0": 0, "255": 1}',
                "--id2label_file", str(id2label_file), "--task", task, "--loss", loss,
                "--max_steps", str(config["steps"]), "--learning_rate", str(config["learning_rate"]),
                "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "1",
                "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "50",
                "--num_preview_images", "1", "--seed", str(config["seed"]), "--report_to", "none",
                "--output_dir", str(output_dir),
            ]
        )  # fmt: skip
        seconds = time.perf_counter() - started
        results = json.loads((output_dir / "eval_results.json").read_text())
    return {
        **{key: config[key] for key in ("head", "seed", "steps", "size", "crop_size")},
        "task": task,
        "loss": loss,
        "foreground_iou": results["eval_per_category_iou"][1],
        "membrane_iou": results["eval_per_category_iou"][0],
        "trivial": results["eval_per_category_iou"][0] < TRIVIAL_MEMBRANE_IOU,
        "mean_iou": results["eval_mean_iou"],
        "overall_accuracy": results["eval_overall_accuracy"],
        "run_s": round(seconds, 1),
    }


def summarise(results: list[dict], seeds: list[int]) -> dict:
    """Per-seed foreground IoU gaps (binary - softmax), their mean and spread, and each head's spread over seeds.

    The heads are within noise when the mean gap is at most two standard errors of the paired gaps, or at most the
    larger head's spread over seeds; never when any run is trivial.
    """
    by = {(r.get("head"), r.get("seed")): r.get("foreground_iou") for r in results}
    gaps = [
        by[("binary", s)] - by[("softmax", s)] for s in seeds if None not in (by[("binary", s)], by[("softmax", s)])
    ]
    spread = {
        head: statistics.stdev(values) if len(values) > 1 else None
        for head in TASKS
        for values in [[by[(head, s)] for s in seeds if by[(head, s)] is not None]]
    }
    mean_gap = statistics.fmean(gaps) if gaps else None
    gap_std = statistics.stdev(gaps) if len(gaps) > 1 else None
    standard_error = gap_std / len(gaps) ** 0.5 if gap_std is not None else None
    seed_noise = max((value for value in spread.values() if value is not None), default=None)
    trivial = any(r.get("trivial") for r in results)
    within = None
    if mean_gap is not None and standard_error is not None and seed_noise is not None:
        within = not trivial and abs(mean_gap) <= max(2 * standard_error, seed_noise)
    return {
        "gaps": gaps,
        "mean_gap": mean_gap,
        "gap_std": gap_std,
        "gap_standard_error": standard_error,
        "std_over_seeds": spread,
        "any_trivial": trivial,
        "within_noise": within,
    }


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="Optimizer steps per run.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Seeds (one run per head each).")
    args = parser.parse_args()
    if args.child:
        child_main(run_configuration, args.child)
        return

    if args.quick:
        base = {"overrides": TINY_SEGFORMER, "size": 64, "crop_size": 64, "scale_range": [1.0, 1.0]}
        base.update(steps=2, learning_rate=1e-3)
        seeds = [0]
    else:
        base = {"overrides": SMALL_SEGFORMER, "size": 512, "crop_size": 256, "scale_range": [1.5, 2.5]}
        base.update(steps=args.steps, learning_rate=1e-3)
        seeds = args.seeds
    info = machine_info()
    print(machine_line(info), flush=True)
    configurations = [{**base, "head": head, "seed": seed} for seed in seeds for head in TASKS]
    results = run_configurations(f"{NAME}.py", configurations, isolated=not args.quick)
    summary = summarise(results, seeds)
    rows = []
    for seed in seeds:
        pair = {r.get("head"): r for r in results if r.get("seed") == seed}
        binary, softmax = pair.get("binary", {}), pair.get("softmax", {})
        rows.append(
            [
                seed,
                binary.get("foreground_iou", binary.get("error")),
                softmax.get("foreground_iou", softmax.get("error")),
                ratio(binary.get("foreground_iou"), softmax.get("foreground_iou")),
                binary.get("membrane_iou"),
                softmax.get("membrane_iou"),
                binary.get("run_s"),
                softmax.get("run_s"),
            ]
        )
    headers = [
        "seed", "hfseg binary fg IoU", "softmax fg IoU", "binary/softmax",
        "binary membrane IoU", "softmax membrane IoU", "binary s", "softmax s",
    ]  # fmt: skip
    print(
        f"\n{NAME}: ISBI EM held-out IoU, {base['steps']} steps, {base['crop_size']} px crops, "
        f"eval at {base['size']} px, same seed per row, CPU"
    )
    print(format_table(headers, rows))
    if summary["mean_gap"] is not None:
        std = ", ".join(
            f"{head} {value:.4f}" for head, value in summary["std_over_seeds"].items() if value is not None
        )
        error = summary["gap_standard_error"]
        print(
            f"mean gap (binary - softmax): {summary['mean_gap']:+.4f}"
            + (f" +- {error:.4f} (standard error)" if error is not None else "")
            + f"; std over seeds: {std or '-'}; within noise: {summary['within_noise']}"
            + ("; some run learnt no membranes (trivial)" if summary["any_trivial"] else "")
        )
    print(machine_line(info))
    path = write_results(
        NAME,
        args,
        {
            "machine": info,
            "config": base,
            "seeds": seeds,
            "results": results,
            "summary": summary,
            "table": {"headers": headers, "rows": rows},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
