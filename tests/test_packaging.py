"""A pip-installed hfseg works like the repo: the wheel holds every module and every recipe, and an installed copy
runs `hfseg finetune --recipe demo` and `accelerate launch -m hfseg.finetune` from an empty folder."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "hfseg", "recipes")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the source tree (so no build/ lands in the checkout), offline."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        capture_output=True, text=True, cwd=source, timeout=300, env={**os.environ, "PIP_NO_INDEX": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    (built,) = wheels.glob("hfseg-*.whl")
    return built


def test_wheel_ships_every_module_and_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "hfseg").rglob("*.py")}
    recipes = {
        "hfseg/recipes/" + path.relative_to(ROOT / "recipes").as_posix() for path in (ROOT / "recipes").rglob("*.yaml")
    }
    assert "hfseg/recipes/demo.yaml" in recipes and "hfseg/recipes/accelerate/multi_gpu.yaml" in recipes
    assert modules - names == set(), "modules missing from the wheel: list their package in pyproject.toml"
    assert recipes - names == set()
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "hfseg = hfseg.cli:main" in entry_points


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """The wheel installed with `pip --target` (dependencies from this venv), and an environment that imports it
    instead of the checkout."""
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return target, env


@pytest.mark.slow
def test_installed_wheel_runs_a_recipe_from_an_empty_folder(installed, tmp_path):
    target, env = installed
    where = subprocess.run(
        [sys.executable, "-c", "import hfseg.config as c; print(c.__file__); print(c.RECIPES_DIR)"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    module_file, recipes_dir = where.stdout.split()
    assert Path(module_file).is_relative_to(target), "the checkout was imported, not the installed wheel"
    assert Path(recipes_dir) == target / "hfseg" / "recipes"

    result = subprocess.run(
        [str(target / "bin" / "hfseg"), "finetune", "--recipe", "demo", "--max_steps", "2",
         "--synthetic_train_size", "4", "--synthetic_eval_size", "2", "--per_device_train_batch_size", "2",
         "--per_device_eval_batch_size", "2", "--image_size", "64", "--crop_size", "64",
         "--eval_strategy", "no", "--save_strategy", "no", "--dataloader_num_workers", "0",
         "--num_preview_images", "1", "--report_to", "none"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    output_dir = tmp_path / "outputs" / "demo"  # the recipe's relative output_dir, under the empty folder
    assert (output_dir / "model.safetensors").is_file()
    saved = yaml.safe_load((output_dir / "hfseg_config.yaml").read_text())
    assert saved["recipe"] == "demo" and saved["max_steps"] == 2 and saved["model_type"] == "segformer"


@pytest.mark.slow
def test_installed_wheel_runs_under_accelerate_launch_as_a_module(installed, tmp_path):
    _, env = installed
    accelerate = Path(sys.executable).with_name("accelerate")
    result = subprocess.run(
        [str(accelerate), "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "hfseg.finetune", "--help"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "--recipe RECIPE" in result.stdout and "--trust_remote_code" in result.stdout
