"""A Hugging Face Space (Gradio SDK) that serves a model with `hfseg app`: app.py, requirements.txt and a README
whose front matter makes the folder a Space; the model is a Hub id, or a local run copied into the folder."""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

from hfseg.errors import HfsegError, require_writable_dir

SPACE_FILES = ("app.py", "requirements.txt", "README.md")
MODEL_FOLDER = "model"
EXAMPLES_FOLDER = "examples"

APP_TEMPLATE = '''"""Web demo of {model_ref} (semantic segmentation), served by hfseg's Gradio app."""

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from hfseg.deploy.app import build_demo  # noqa: E402

HERE = Path(__file__).resolve().parent
MODEL = {model_expr}
EXAMPLES = sorted(str(path) for path in (HERE / "{examples}").glob("*") if path.is_file())

demo = build_demo(MODEL, examples=EXAMPLES)

if __name__ == "__main__":
    demo.launch()
'''

README_TEMPLATE = """---
title: {title}
emoji: 🖼️
colorFrom: blue
colorTo: green
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
{model_line}---

# {title}

Semantic segmentation demo of `{model_ref}`: upload an image (or pick an example) to see the predicted classes
over it, each class's share of the image, and the index mask (pixel value = class id) to download. Whole-image,
sliding-window and flip inference are switches.

Run it locally: `pip install -r requirements.txt && python app.py`.
"""


def hfseg_requirement() -> str:
    """`hfseg[app]==VERSION` of the installed hfseg (the Space installs the same release)."""
    try:
        return f"hfseg[app]=={metadata.version('hfseg')}"
    except metadata.PackageNotFoundError:
        return "hfseg[app]"


def gradio_version() -> str:
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        raise HfsegError("writing a Space needs gradio's version: pip install 'hfseg[app]'") from None


def write_space(
    space_dir: str | Path,
    model_ref: str,
    model_files: list[Path] | None = None,
    examples: list[Path] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Write a Gradio Space for `model_ref` into `space_dir`.

    Args:
        model_ref: the Hub id the Space loads; with `model_files`, only the name shown (the files are copied into
            `space_dir/model/` and loaded from there).
        model_files: a local run's publishable files (`hfseg.hub.push.files_to_push`), copied into the Space.
        examples: images copied into `space_dir/examples/`, offered as examples in the app.

    Returns:
        The files written.

    Raises:
        HfsegError: `space_dir` cannot be written, or an example image is missing.
    """
    space_dir = Path(space_dir)
    require_writable_dir(space_dir, "--write_space")
    space_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if model_files:
        (space_dir / MODEL_FOLDER).mkdir(exist_ok=True)
        for path in model_files:
            written.append(Path(shutil.copy2(path, space_dir / MODEL_FOLDER / Path(path).name)))
        model_expr = f'str(HERE / "{MODEL_FOLDER}")'
    else:
        model_expr = repr(model_ref)
    (space_dir / EXAMPLES_FOLDER).mkdir(exist_ok=True)
    for path in examples or []:
        if not Path(path).is_file():
            raise HfsegError(f"--examples: {path} is not a file; pass image files or a folder of images")
        written.append(Path(shutil.copy2(path, space_dir / EXAMPLES_FOLDER / Path(path).name)))
    title = title or model_ref.rstrip("/").split("/")[-1]
    model_line = "" if model_files else f"models:\n- {model_ref}\n"
    texts = {
        "app.py": APP_TEMPLATE.format(model_ref=model_ref, model_expr=model_expr, examples=EXAMPLES_FOLDER),
        "requirements.txt": hfseg_requirement() + "\n",
        "README.md": README_TEMPLATE.format(
            title=title, gradio_version=gradio_version(), model_line=model_line, model_ref=model_ref
        ),
    }
    for name, text in texts.items():
        (space_dir / name).write_text(text, encoding="utf-8")
        written.append(space_dir / name)
    return written
