"""Shared benchmark plumbing: machine description, per-configuration child processes with their peak RSS,
synthetic ADE-sized samples, tables and JSON results.

The parent side imports only the standard library, so a parent's own footprint never pollutes a figure:
every measured configuration runs in a fresh `python benchmarks/NAME.py --child '<json>'` process.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# The repository's own hfseg wins over any installed copy; benchmarks never touch the network.
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: The tiny SegFormer the `--quick` runs use (the same sizes as tests/conftest.py).
TINY_SEGFORMER = {
    "hidden_sizes": [8, 16, 24, 32],
    "depths": [1, 1, 1, 1],
    "num_attention_heads": [1, 1, 1, 1],
    "decoder_hidden_size": 16,
}
# A small Mask2Former (Swin encoder): the mask-classification family's own loss (Hungarian matching, point-sampled
# mask BCE + Dice over every decoder layer) is a larger share of the step than a SegFormer's cross-entropy.
SMALL_MASK2FORMER = {
    "backbone_config": {
        "model_type": "swin",
        "embed_dim": 32,
        "depths": [1, 1, 2, 1],
        "num_heads": [1, 2, 4, 8],
        "window_size": 8,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
    "hidden_dim": 64,
    "encoder_feedforward_dim": 128,
    "dim_feedforward": 256,
    "encoder_layers": 2,
    "decoder_layers": 4,
    "num_queries": 32,
    "num_attention_heads": 4,
    "mask_feature_size": 64,
    "feature_size": 64,
    "train_num_points": 1024,
}


def base_parser(description: str) -> argparse.ArgumentParser:
    """`--quick` (CI-sized run), `--output` (JSON path) and the hidden `--child` of every benchmark."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="CI-sized run: tiny model, few images (seconds).")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="JSON result path (default: benchmarks/results/NAME.json, or NAME.quick.json with --quick).",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def default_output(name: str, quick: bool) -> Path:
    return RESULTS_DIR / (f"{name}.quick.json" if quick else f"{name}.json")


# --- machine -------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU, cores, memory, load and library versions (library versions come from a child: no torch here)."""
    info = {
        "device": "cpu",
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_total_gb": round(_meminfo("MemTotal") / 2**20, 1),
        "memory_available_gb_at_start": round(_meminfo("MemAvailable") / 2**20, 1),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for package in ("torch", "torchvision", "transformers", "datasets", "accelerate"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info


def _meminfo(key: str) -> int:
    """A /proc/meminfo field in KiB (0 where unavailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def available_memory_bytes() -> int:
    return _meminfo("MemAvailable") * 1024


def machine_line(info: dict) -> str:
    return (
        f"machine: {info['cpu_model']}, {info['usable_cores']} cores, {info['memory_total_gb']} GB RAM, "
        f"load {info['load_average_at_start']}, torch {info.get('torch')}, "
        f"transformers {info.get('transformers')}, device {info['device']}"
    ) + (" -- BUSY: load above the core count, timings are noisy" if is_busy(info) else "")


def is_busy(info: dict) -> bool:
    """Whether other work competed for the CPU when the benchmark started (1-minute load > usable cores)."""
    return info["load_average_at_start"][0] > info["usable_cores"]


# --- child processes -------------------------------------------------------------------------------------------


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_child(script: str, config: dict) -> dict:
    """Run `script --child <config>` in a fresh process; return its JSON result plus `peak_rss_mb`.

    The child prints one JSON object as its last stdout line. `peak_rss_mb` is that process's maximum resident
    set size (`getrusage(RUSAGE_SELF)`, taken as it finishes), so one configuration never inherits another's
    memory; `tree_peak_rss_mb` is the kernel's figure at `wait4`, which also covers processes the child forked.
    """
    command = [sys.executable, str(BENCH_DIR / script), "--child", json.dumps(config)]
    started = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=_child_env(), text=True)
        stdout = process.stdout.read()
        process.stdout.close()
        # wait4 (not wait) so the kernel hands back this child's own rusage, peak RSS included.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        errors = stderr.read()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = "\n".join(errors.strip().splitlines()[-15:])
        print(f"child {script} {config} failed with exit code {process.returncode}:\n{tail}", file=sys.stderr)
        return {"error": f"exit code {process.returncode}: {tail.splitlines()[-1] if tail else ''}", "config": config}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"error": "child printed no JSON result", "config": config, "process_wall_s": wall}
    result = json.loads(lines[-1])
    # The child's own peak is the figure; the kernel's figure at wait4 also covers anything it forked.
    result["peak_rss_mb"] = result.pop("self_peak_rss_mb")
    result["tree_peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    result["process_wall_s"] = round(wall, 2)
    return result


def run_configurations(script: str, configs: list[dict], isolated: bool = True) -> list[dict]:
    """Results of `configs`, one fresh child process each (`isolated`), or all in one child (quick runs: the
    same code paths at a fraction of the start-up cost, but peak RSS is then shared and not comparable)."""
    if isolated:
        results = []
        for config in configs:
            results.append(run_child(script, config))
            print(json.dumps({k: v for k, v in results[-1].items() if not k.endswith("_times")}), flush=True)
        return results
    shared = run_child(script, {"batch": configs})
    if "error" in shared:
        return [dict(shared) for _ in configs]
    results = shared.pop("results")
    for result in results:
        result.update({key: value for key, value in shared.items() if key != "peak_rss_mb"})
        result["peak_rss_mb_shared"] = shared.get("peak_rss_mb")
        print(json.dumps({k: v for k, v in result.items() if not k.endswith("_times")}), flush=True)
    return results


def child_main(run_configuration, payload: str) -> None:
    """Child side: run one configuration (or a `batch` of them) and print the result(s), with this process's
    own peak RSS and torch's thread count, as the last stdout line."""
    config = json.loads(payload)
    if "batch" in config:
        result = {"results": [run_configuration(item) for item in config["batch"]]}
    else:
        result = run_configuration(config)
    import torch

    result["torch_threads"] = torch.get_num_threads()
    result["self_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


def current_rss_mb() -> float:
    """This process's resident set size now (VmRSS), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


# --- synthetic ADE-sized data -------------------------------------------------------------------------------


def ade_like_sample(index: int, num_labels: int = 150, base_size: tuple[int, int] = (512, 683), seed: int = 0):
    """A deterministic ADE20K-sized sample: (H, W, 3) uint8 image and (H, W) uint8 labels in 0..num_labels-1.

    Sizes vary around `base_size` (+-12%), as ADE20K's do around 512x683; labels are blocky regions of
    random classes, the image is each region's colour plus noise. Cheap (milliseconds), so no data set is kept.
    """
    import numpy as np

    rng = np.random.default_rng([seed, index])
    height = int(base_size[0] * rng.uniform(0.88, 1.12))
    width = int(base_size[1] * rng.uniform(0.88, 1.12))
    cells_y, cells_x = int(rng.integers(4, 12)), int(rng.integers(4, 12))
    grid = rng.integers(0, num_labels, size=(cells_y, cells_x), dtype=np.int64)
    rows = np.minimum(np.arange(height) * cells_y // height, cells_y - 1)
    cols = np.minimum(np.arange(width) * cells_x // width, cells_x - 1)
    labels = grid[rows[:, None], cols[None, :]]
    palette = rng.integers(0, 256, size=(num_labels, 3))
    image = palette[labels] + rng.normal(0, 12, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), labels.astype(np.uint8)


# --- output --------------------------------------------------------------------------------------------------


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h)) for i, h in enumerate(headers)
    ]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join([line, rule, *body])


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def ratio(ours: float | None, baseline: float | None) -> float | None:
    if ours is None or baseline is None or baseline == 0:
        return None
    return round(ours / baseline, 4)


def write_results(name: str, args, payload: dict) -> Path:
    """Write `{benchmark, quick, machine, command, ...payload}` as JSON; returns the path."""
    path = args.output or default_output(name, args.quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([f"benchmarks/{name}.py", *sys.argv[1:]])
    document = {"benchmark": name, "quick": bool(args.quick), "command": command, **payload}
    if "machine" in document:
        document["machine"] = {
            **document["machine"],
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "busy": is_busy(document["machine"]),
        }
    path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
    return path


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
