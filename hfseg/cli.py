"""`hfseg` command line: subcommands that call the modules (finetune, ...)."""

from __future__ import annotations

import sys

SUBCOMMANDS = {
    "finetune": ("hfseg.finetune", "fine-tune a model (same flags as hfseg/finetune.py)"),
    "evaluate": (
        "hfseg.evaluation.evaluate_model",
        "score a saved model: per-class table, eval_results.json, confusion matrix",
    ),
    "predict": ("hfseg.evaluation.predict", "segment images: index-mask PNGs and overlays"),
    "doctor": ("hfseg.data.doctor", "check a data source (pairs, sizes, label values) before training on it"),
    "export": (
        "hfseg.deploy.export",
        "export a run to ONNX and check it against PyTorch (RUN --format onnx --output DIR)",
    ),
    "push": ("hfseg.hub.push", "push a finished run to the Hugging Face Hub (OUTPUT_DIR --repo_id ID)"),
    "app": (
        "hfseg.deploy.app",
        "web demo of a saved model (RUN [--port 7860]) or a Hugging Face Space (--write_space)",
    ),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: hfseg {" + ",".join(SUBCOMMANDS) + "} [flags]\n")
        for name, (_, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<10} {help_text}")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    import importlib

    if argv[0] == "finetune" and not {"-h", "--help"} & set(argv):
        from hfseg.config import check_own_flags
        from hfseg.errors import strip_debug, user_errors_exit

        user_errors_exit(check_own_flags)(strip_debug(argv[1:]))  # a wrong hfseg flag stops before torch loads
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    sys.argv = [f"hfseg {argv[0]}", *argv[1:]]
    module.main(argv[1:])


if __name__ == "__main__":
    main()
