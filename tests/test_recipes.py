"""Every recipe loads, and runs 2 training steps (plus an evaluation and a checkpoint) with its own optimiser,
schedule, loss and augmentation settings, a tiny model of the same family swapped in and synthetic data."""

import json

import pytest
import yaml
from conftest import (
    TINY_MASK_CLASSIFICATION,
    TINY_SEGFORMER,
    TINY_UPERNET,
    TINY_UPERNET_SWIN,
    write_tiny_clip_tokenizer,
)

from hfseg.config import RECIPES_DIR, load_recipe, parse_args

RECIPES = sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))

TINY_MOBILENET_V2 = {"image_size": 64, "depth_multiplier": 0.25, "min_depth": 4, "output_stride": 16}
TINY_UPERNET_DINOV2 = {
    **{key: value for key, value in TINY_UPERNET.items() if key != "backbone_config"},
    "backbone_config": {"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2,
                        "intermediate_size": 32, "patch_size": 14, "image_size": 56},
}  # fmt: skip
TINY_MASK2FORMER = {
    "backbone_config": {"model_type": "swin", "embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                        "window_size": 4, "image_size": 64, "out_features": ["stage1", "stage2", "stage3", "stage4"]},
    "feature_size": 32, "mask_feature_size": 32, "hidden_dim": 32, "encoder_feedforward_dim": 32, "encoder_layers": 1,
    "decoder_layers": 2, "num_attention_heads": 2, "dim_feedforward": 32, "num_queries": 5,
}  # fmt: skip
TINY_EOMT = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 64,
    "patch_size": 16, "num_queries": 5, "num_blocks": 1, "num_upscale_blocks": 2,
}  # fmt: skip


def tiny_stand_in(recipe: dict) -> tuple[str, dict]:
    """(model_type, config_overrides) of a tiny model of the recipe's family."""
    if recipe.get("model_type") == "upernet":
        backbone = (json.loads(recipe["config_overrides"]).get("backbone_config") or {}).get("model_type")
        if backbone is None:  # the backbone checkpoint's own config: its type is in the name
            backbone = "dinov2" if "dinov2" in recipe["backbone_name_or_path"] else "convnext"
        return "upernet", {"swin": TINY_UPERNET_SWIN, "dinov2": TINY_UPERNET_DINOV2}.get(backbone, TINY_UPERNET)
    if recipe.get("model_type") == "mask2former":
        return "mask2former", TINY_MASK2FORMER
    name = recipe.get("model_name_or_path") or recipe.get("model_type")
    if "eomt" in name:
        return "eomt", TINY_EOMT
    if "oneformer" in name:
        return "oneformer", TINY_MASK_CLASSIFICATION["oneformer"]
    if "mobilenet_v2" in name:
        return "mobilenet_v2", TINY_MOBILENET_V2
    assert "mit-b" in name or name == "segformer", f"no tiny stand-in for {name}"
    return "segformer", TINY_SEGFORMER


def smoke_args(name: str, output_dir) -> list[str]:
    recipe = load_recipe(name)
    model_type, overrides = tiny_stand_in(recipe)
    tokenizer = []  # OneFormer's CLIP tokenizer, a tiny one
    if model_type == "oneformer":
        tokenizer = ["--tokenizer_name_or_path", str(write_tiny_clip_tokenizer(f"{output_dir}_tokenizer"))]
    return [*tokenizer,
        "--recipe", name, "--model_type", model_type, "--config_overrides", json.dumps(overrides),
        "--model_name_or_path", "", "--backbone_name_or_path", "",
        "--data_dir", "", "--layout", "", "--dataset_name", "synthetic",
        "--synthetic_train_size", "8", "--synthetic_eval_size", "2",
        # ADE recipes reduce labels: the synthetic background becomes ignore, most of the pixels, on purpose.
        "--allow_high_ignore", "true",
        "--image_size", "64", "--crop_size", "64", "--eval_short_side", "64", "--eval_crop_size", "64",
        "--max_steps", "2", "--warmup_steps", "0",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
        "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
        "--logging_steps", "1", "--dataloader_num_workers", "0", "--num_preview_images", "1",
        "--report_to", "none", "--output_dir", str(output_dir),
    ]  # fmt: skip


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_header_and_fields(name):
    text = (RECIPES_DIR / f"{name}.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header and header[0].startswith(f"# {name}:"), "a recipe starts with '# name: what it trains'"
    assert any(word in " ".join(header).lower() for word in ("paper", "published", "reference")), "cite the number"
    recipe = yaml.safe_load(text)
    model_args, data_args, training_args = parse_args(["--recipe", name, "--output_dir", "/tmp/unused"])
    assert data_args.crop_size == recipe["crop_size"]
    assert training_args.learning_rate == recipe["learning_rate"]


def test_recipe_specifics():
    _, _, segformer = parse_args(["--recipe", "segformer_ade", "--output_dir", "/tmp/unused"])
    assert segformer.head_lr_mult == 10 and segformer.lr_scheduler_type == "polynomial"
    assert segformer.lr_scheduler_kwargs == {"power": 1.0, "lr_end": 0.0}
    _, data, deeplab = parse_args(["--recipe", "deeplab_voc", "--output_dir", "/tmp/unused"])
    assert (deeplab.optim, deeplab.optim_args, deeplab.max_grad_norm) == ("sgd", "momentum=0.9", 10.0)
    assert deeplab.lr_scheduler_type == "cosine" and deeplab.weight_decay == 1e-4 and data.crop_size == 512
    assert deeplab.learning_rate == pytest.approx(0.007 * deeplab.per_device_train_batch_size / 16)
    lora_model, _, lora = parse_args(["--recipe", "segformer_b0_lora_ade", "--output_dir", "/tmp/unused"])
    assert (lora_model.peft, lora_model.lora_r, lora_model.lora_alpha) == ("lora", 32, 32)
    assert lora_model.lora_target_modules == ["q_proj", "v_proj"] and lora.learning_rate == 5e-4
    dinov2_model, dinov2_data, dinov2 = parse_args(
        ["--recipe", "dinov2_small_upernet_frozen_ade", "--output_dir", "/tmp/unused"]
    )
    assert dinov2.freeze_backbone and dinov2_model.backbone_name_or_path == "facebook/dinov2-small"
    assert dinov2_data.crop_size % 14 == 0 and dinov2_model.image_size % 14 == 0, "multiples of the patch size"
    _, data, pets = parse_args(["--recipe", "segformer_pets", "--output_dir", "/tmp/unused"])
    assert pets.load_best_model_at_end and pets.metric_for_best_model == "mean_iou" and data.layout == "pets"


# segformer_pets (head lr x10, poly, best-checkpoint by mean_iou) runs by default; the others are slow tests.
FAST_RECIPES = ("segformer_pets",)


@pytest.mark.parametrize(
    "name", [name if name in FAST_RECIPES else pytest.param(name, marks=pytest.mark.slow) for name in RECIPES]
)
def test_recipe_runs_two_steps_with_a_tiny_model(name, tmp_path):
    from hfseg.finetune import main

    output_dir = tmp_path / name
    metrics = main(smoke_args(name, output_dir))
    assert 0.0 <= metrics["eval_mean_iou"] <= 1.0
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2]
    assert any("eval_mean_iou" in entry for entry in state["log_history"])
    assert (output_dir / "training_curves.png").stat().st_size > 1000
    resolved = yaml.safe_load((output_dir / "hfseg_config.yaml").read_text())
    assert resolved["recipe"] == name and resolved["max_steps"] == 2


def test_training_curves_png_shows_loss_and_miou(tmp_path):
    import numpy as np
    from PIL import Image

    from hfseg.evaluation.visualize import save_training_curves

    history = [{"step": step, "loss": 2.0 / step} for step in range(1, 11)]
    history += [{"step": step, "eval_mean_iou": step / 12} for step in (5, 10)]
    path = save_training_curves(history, tmp_path / "training_curves.png")
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)

    def has(colour):  # matplotlib's tab:blue (loss) and tab:orange (mIoU)
        return (np.abs(pixels - colour).sum(axis=1) < 30).sum() > 20

    assert has((31, 119, 180)) and has((255, 127, 14))
    assert save_training_curves([{"step": 1, "learning_rate": 0.1}], tmp_path / "empty.png") is None


@pytest.mark.slow
def test_report_to_tensorboard_writes_event_files(tmp_path):
    """`--report_to tensorboard` is transformers' own callback: events land under output_dir/runs/."""
    pytest.importorskip("tensorboard", reason="pip install 'hfseg[tensorboard]'")
    from conftest import tiny_run_args
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hfseg.finetune import main

    output_dir = tmp_path / "run"
    main(tiny_run_args(output_dir, "--report_to", "tensorboard", "--max_steps", "2"))
    events = list((output_dir / "runs").rglob("events.out.tfevents.*"))
    assert events, sorted(str(p) for p in output_dir.rglob("*"))
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"]
