"""Startup time of hfseg's commands: wall seconds until `hfseg --help`, `hfseg doctor` (help, a 2-pair folder),
an error in an hfseg flag and `hfseg finetune --help` answer, against `import torch` (the floor of any command
that imports torch) in the same run; `--compare PATH` also times another checkout (e.g. before a change).

python benchmarks/startup.py [--repeats 5] [--compare ../main] [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, base_parser, format_table, machine_info, machine_line, ratio, write_results

BASELINE = ("import torch", ["-c", "import torch"])


def commands(data_dir: Path) -> list[tuple[str, list[str], int]]:
    """(name, python arguments, expected exit status) of each measured command."""
    doctor = ["-m", "hfseg.cli", "doctor", "--data_dir", str(data_dir), "--layout", "folder", "--no_progress"]
    return [
        ("hfseg --help", ["-m", "hfseg.cli", "--help"], 0),
        ("hfseg doctor --help", ["-m", "hfseg.cli", "doctor", "--help"], 0),
        ("hfseg doctor (2 pairs)", doctor, 0),
        ("hfseg finetune --crop_size large", ["-m", "hfseg.cli", "finetune", "--crop_size", "large"], 2),
        ("hfseg finetune --help", ["-m", "hfseg.cli", "finetune", "--help"], 0),
    ]


def tiny_folder(root: Path) -> Path:
    """images/ + masks/ with two 16x16 pairs and id2label.json, written with the standard library only."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png(path: Path, channels: int) -> None:  # a black 16x16 8-bit PNG, RGB or grayscale
        header = struct.pack(">IIBBBBB", 16, 16, 8, 2 if channels == 3 else 0, 0, 0, 0)
        pixels = zlib.compress(b"".join(b"\x00" + bytes(16 * channels) for _ in range(16)))
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))

    for folder, channels in (("images", 3), ("masks", 1)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(2):
            png(root / folder / f"{index}.png", channels)
    (root / "id2label.json").write_text(json.dumps({"0": "background", "1": "thing"}))
    return root


def time_command(arguments: list[str], checkout: Path, expected: int, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        completed = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, env=env, cwd=checkout)
        seconds.append(time.perf_counter() - start)
        if completed.returncode != expected:
            return {"error": f"exit {completed.returncode} (expected {expected}): {completed.stderr[-500:]}"}
    return {"min_s": round(min(seconds), 3), "median_s": round(statistics.median(seconds), 3), "runs": seconds}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="Runs per command (min and median are reported).")
    parser.add_argument("--compare", type=Path, default=None, help="Another hfseg checkout to time the same way.")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    info = machine_info()
    print(machine_line(info))
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = tiny_folder(Path(tmp))
        baseline = time_command(BASELINE[1], ROOT, 0, repeats)
        results = []
        for name, arguments, expected in commands(data_dir):
            result = {"command": name, "ours": time_command(arguments, ROOT, expected, repeats)}
            if args.compare:
                result["compare"] = time_command(arguments, args.compare.resolve(), expected, repeats)
            results.append(result)
    headers = ["command", "ours min s", "ours median s", "ours / import torch"]
    if args.compare:
        headers += [f"{args.compare} min s", "ours / compare"]
    rows = [[BASELINE[0], baseline.get("min_s"), baseline.get("median_s"), 1.0] + (["-", "-"] if args.compare else [])]
    for result in results:
        ours = result["ours"]
        row = [
            result["command"],
            ours.get("min_s"),
            ours.get("median_s"),
            ratio(ours.get("min_s"), baseline.get("min_s")),
        ]
        if args.compare:
            row += [result["compare"].get("min_s"), ratio(ours.get("min_s"), result["compare"].get("min_s"))]
        rows.append(row)
    table = format_table(headers, rows)
    print(table)
    errors = [
        f"{r['command']}: {r[key]['error']}"
        for r in results
        for key in ("ours", "compare")
        if "error" in r.get(key, {})
    ]
    for error in errors:
        print("error:", error)
    payload = {"machine": info, "repeats": repeats, "baseline": {"command": BASELINE[0], **baseline}}
    payload.update({"compare": str(args.compare) if args.compare else None, "results": results})
    payload["table"] = {"headers": headers, "rows": rows}
    print(f"results: {write_results('startup', args, payload)}")
    if any("error" in result["ours"] for result in results):  # another checkout's failure is reported, not ours
        sys.exit(1)


if __name__ == "__main__":
    main()
