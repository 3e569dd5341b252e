"""The tree's rules, read from the imports of every module (top level and inside functions), so the shape stays:
metrics know no Trainer and no `datasets`, data knows no model code, no library module imports a command, and the
model card is built from saved files, not from a live Trainer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hfseg"

# Modules whose `main` is a command (`hfseg NAME`); `finetune` and `cli` are entry points too.
COMMANDS = {
    "hfseg.finetune",
    "hfseg.cli",
    "hfseg.data.doctor",
    "hfseg.evaluation.evaluate_model",
    "hfseg.evaluation.predict",
    "hfseg.hub.push",
    "hfseg.deploy.app",
    "hfseg.deploy.export",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module (and `module.name` for `from module import name`) that a file imports, anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = {module_name(path): imported_names(path) for path in sorted(PACKAGE.rglob("*.py"))}


def offending(module: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in MODULES[module] if any(name == f or name.startswith(f + ".") for f in forbidden))


def test_every_module_is_read():
    assert "hfseg.evaluation.metrics" in MODULES and "hfseg.data.adapters.folder" in MODULES
    assert len(MODULES) > 30


def test_metrics_import_no_trainer_and_no_datasets():
    forbidden = ("datasets", "transformers.Trainer", "transformers.trainer", "hfseg.training", "accelerate")
    assert offending("hfseg.evaluation.metrics", forbidden) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("hfseg.data")))
def test_data_imports_no_model_code(module):
    forbidden = (
        "hfseg.models",
        "hfseg.training",
        "hfseg.evaluation",
        "transformers.models",
        "transformers.AutoModelForSemanticSegmentation",
        "transformers.Trainer",
        "torch.nn",
        "hfseg.hub.card",
        "hfseg.hub.push",
    )
    assert offending(module, forbidden) == []


@pytest.mark.parametrize("module", sorted(set(MODULES) - COMMANDS))
def test_no_library_module_imports_a_command(module):
    assert offending(module, tuple(COMMANDS)) == []


def test_model_card_is_built_from_files_not_a_trainer():
    forbidden = ("transformers.Trainer", "transformers.trainer", "hfseg.training", "torch")
    assert offending("hfseg.hub.card", forbidden) == []


def test_nothing_imports_the_app_and_only_the_app_imports_gradio():
    """The web demo is an optional extra (`hfseg[app]`): no other part of hfseg may need it or gradio."""
    assert "hfseg.deploy.app" in MODULES
    for module in (m for m in MODULES if m != "hfseg.deploy.app"):
        assert offending(module, ("hfseg.deploy.app", "gradio", "gradio_client")) == [], module


def test_models_know_no_data_sources():
    for module in (m for m in MODULES if m.startswith("hfseg.models")):
        assert offending(module, ("hfseg.data.adapters", "datasets", "hfseg.hub.push", "hfseg.evaluation")) == []


def test_no_module_shadows_a_top_level_package():
    """`accelerate launch hfseg/finetune.py` puts hfseg/ first on sys.path: no file there may take a package's name."""
    shadowing = {"datasets", "evaluate", "logging", "types", "profile", "transformers", "torch", "accelerate", "peft"}
    for folder in [PACKAGE, *[p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
        names = {p.stem for p in folder.iterdir() if p.suffix == ".py"} | {
            p.name for p in folder.iterdir() if p.is_dir()
        }
        assert names.isdisjoint(shadowing), (folder, names & shadowing)


def test_what_users_type_still_imports():
    from hfseg import SegTrainer, StreamingSegmentationMetric, compute_segmentation_metrics
    from hfseg.evaluation.pipeline import SegmentationPipeline
    from hfseg.segmentation_pipeline import SegmentationPipeline as ReExported

    assert ReExported is SegmentationPipeline
    assert callable(compute_segmentation_metrics) and SegTrainer and StreamingSegmentationMetric


# Declared dependencies that hfseg needs without importing them by name, and why.
USED_WITHOUT_IMPORT = {
    "accelerate": "transformers.Trainer requires it",
    "safetensors": "save_pretrained writes model.safetensors with it",
    "scipy": "the Hungarian matcher of Mask2Former/MaskFormer/EoMT losses in transformers requires it",
}


def test_every_declared_dependency_has_a_role():
    """A dependency nothing imports (and nothing needs) is dead weight in every install: name its role or drop it."""
    import re

    text = (PACKAGE.parent / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)  # tomllib is Python 3.11+
    requirements = re.findall(r'"([^"]+)"', block)
    assert "torch>=2.4,<2.15" in requirements and len(requirements) > 8
    import_names = {"pyyaml": "yaml", "pillow": "PIL"}
    imported = {name.split(".")[0] for names in MODULES.values() for name in names}
    for requirement in requirements:
        distribution = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
        module = import_names.get(distribution, distribution.replace("-", "_"))
        assert module in imported or distribution in USED_WITHOUT_IMPORT, (
            f"{distribution} is declared in pyproject.toml but no hfseg module imports it"
        )
