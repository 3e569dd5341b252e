"""Recipes as defaults, flags win, unknown keys and wrong types are clear errors, resolved config saved."""

import pytest
import yaml

from hfseg.config import RECIPES_DIR, check_own_flags, load_recipe, parse_args, save_resolved_config
from hfseg.errors import HfsegError


def test_recipe_defaults_and_flag_override(tmp_path):
    model_args, data_args, training_args = parse_args(
        ["--recipe", "demo", "--learning_rate", "0.01", "--output_dir", str(tmp_path)]
    )
    assert model_args.model_type == "segformer"
    assert data_args.dataset_name == "synthetic"
    assert data_args.crop_size == 128
    assert training_args.learning_rate == 0.01  # flag beats the recipe's 0.002
    assert training_args.remove_unused_columns is False
    assert training_args.batch_eval_metrics is True


def test_recipe_by_path(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("dataset_name: synthetic\ncrop_size: 96\nmodel_type: segformer\n")
    _, data_args, _ = parse_args(["--recipe", str(recipe), "--output_dir", str(tmp_path)])
    assert data_args.crop_size == 96


def test_unknown_key_names_key_and_file(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("crop_sise: 96\n")
    with pytest.raises(HfsegError, match=r"unknown key 'crop_sise' in recipe .*bad\.yaml"):
        load_recipe(str(recipe))


def test_wrong_type_names_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("crop_size: large\n")
    with pytest.raises(HfsegError, match="'crop_size' has value 'large'"):
        parse_args(["--recipe", str(recipe)])


def test_missing_recipe_lists_known_ones():
    with pytest.raises(HfsegError, match="recipe 'nope' not found.*demo"):
        parse_args(["--recipe", "nope"])


def test_every_recipe_loads():
    for path in RECIPES_DIR.glob("*.yaml"):
        assert isinstance(load_recipe(str(path)), dict), path


def test_resolved_config_is_saved_and_reloadable(tmp_path):
    arguments = parse_args(["--recipe", "demo", "--output_dir", str(tmp_path)])
    path = save_resolved_config(tmp_path, *arguments)
    saved = yaml.safe_load(path.read_text())
    assert saved["recipe"] == "demo"
    assert saved["crop_size"] == 128
    assert saved["lr_scheduler_type"] == "polynomial"
    # the saved file is itself a valid recipe
    model_args, data_args, _ = parse_args(["--recipe", str(path)])
    assert data_args.crop_size == 128 and model_args.model_type == "segformer"


def alias_bomb(levels: int = 10, width: int = 9) -> str:
    """A "billion laughs" recipe inside a real field: level i holds `width` aliases of level i-1, so the 540-byte
    file expands to 9**9 strings once the value is encoded (config_overrides becomes JSON)."""
    lines = ["config_overrides:", '  l0: &l0 ["lol"]']
    for level in range(1, levels):
        aliases = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"  l{level}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_expansion(tmp_path):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(alias_bomb())
    with pytest.raises(HfsegError, match=r"bomb\.yaml line 2: YAML anchor '&l0' found; .*write each value out"):
        parse_args(["--recipe", str(recipe)])


def test_alias_is_refused_with_its_line(tmp_path):
    recipe = tmp_path / "alias.yaml"
    recipe.write_text("dataset_name: synthetic\nscale_range: [0.5, 2.0]\nreference_source: *x\n")
    with pytest.raises(HfsegError, match=r"alias\.yaml line 3: YAML alias '\*x' found"):
        load_recipe(str(recipe))


def test_oversized_recipe_is_refused_unread(tmp_path):
    recipe = tmp_path / "huge.yaml"
    recipe.write_text("# padding\n" * 200_000)
    with pytest.raises(HfsegError, match=r"huge\.yaml is 2000000 bytes, larger than any recipe"):
        load_recipe(str(recipe))


def test_recipe_cannot_turn_on_remote_code(tmp_path):
    recipe = tmp_path / "remote.yaml"
    recipe.write_text("model_name_or_path: some/checkpoint\ntrust_remote_code: true\n")
    with pytest.raises(HfsegError, match=r"remote\.yaml sets trust_remote_code: True.*--trust_remote_code on the"):
        parse_args(["--recipe", str(recipe)])
    recipe.write_text("model_name_or_path: some/checkpoint\ntrust_remote_code: false\n")
    model_args, _, _ = parse_args(["--recipe", str(recipe), "--trust_remote_code", "--output_dir", str(tmp_path)])
    assert model_args.trust_remote_code is True  # the command line still can
    model_args, _, _ = parse_args(["--recipe", str(recipe), "--output_dir", str(tmp_path)])
    assert model_args.trust_remote_code is False


def test_help_puts_hfseg_sections_before_trainer_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    headings = [line[:-1] for line in out.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert headings == [
        "options",
        "model",
        "data",
        "labels",
        "augmentation",
        "loss",
        "optimizer",
        "evaluation",
        "model card",
        "Trainer options (transformers.TrainingArguments)",
    ]
    sections = dict.fromkeys(headings, "")
    current = None
    for line in out.splitlines():
        current = line[:-1] if line[:-1] in sections else current
        if current:
            sections[current] += line + "\n"
    for section, flag in [
        ("model", "--model_name_or_path"),
        ("data", "--layout"),
        ("labels", "--reduce_labels"),
        ("augmentation", "--crop_size"),
        ("loss", "--label_smoothing "),
        ("optimizer", "--head_lr_mult"),
        ("evaluation", "--eval_mode"),
        ("Trainer options (transformers.TrainingArguments)", "--learning_rate"),
    ]:
        assert flag in sections[section], (section, flag)
    assert "--learning_rate" not in sections["loss"] and "--crop_size" not in sections[headings[-1]]
    assert out.splitlines()[0].startswith("usage:") and len(out.split("\n\n")[0].splitlines()) <= 3  # short usage


def test_label_smoothing_has_one_name(tmp_path):
    _, _, training_args = parse_args(["--label_smoothing", "0.1", "--output_dir", str(tmp_path)])
    assert training_args.label_smoothing == 0.1 and training_args.label_smoothing_factor == 0.0
    with pytest.raises(HfsegError, match=r"--label_smoothing_factor 0.1 is Trainer's name.*use --label_smoothing 0.1"):
        parse_args(["--label_smoothing_factor", "0.1", "--output_dir", str(tmp_path)])


def test_own_flags_are_checked_before_trainer_flags():
    with pytest.raises(HfsegError, match="--crop_size/--crop-size: invalid int value: 'large'"):
        check_own_flags(["--learning_rate", "1e-3", "--crop_size", "large"])
    model_args, data_args, own, rest = check_own_flags(
        ["--crop_size", "64", "--learning_rate", "1e-3", "--loss", "dice"]
    )
    assert data_args.crop_size == 64 and own.loss == "dice" and rest == ["--learning_rate", "1e-3"]


def test_help_text_with_a_percent_sign_prints():
    from dataclasses import dataclass, field

    from hfseg.config import SegArgumentParser

    @dataclass
    class Percent:
        share: float = field(default=0.6, metadata={"help": "Mostly ignored (over 60%, or 25%% escaped already)."})

    text = " ".join(SegArgumentParser([Percent]).format_help().split())
    assert "over 60%, or 25% escaped already" in text and "(default: 0.6)" in text
