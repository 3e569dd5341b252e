"""Optimizer groups: exact lr per group (head x head_lr_mult), no decay on norms/biases/position embeddings,
kept through the schedule; SGD with momentum from TrainingArguments."""

import json

import pytest
import torch
from conftest import tiny_model

from hfseg.config import ModelArguments, SegTrainingArguments
from hfseg.models.build import build_model
from hfseg.models.param_groups import head_parameter_names, layer_lr_scales, no_decay_parameter_names, parameter_groups
from hfseg.training.trainer import SegTrainer


def _by_name(groups):
    return {name: group for group in groups for name in group["names"]}


def test_segformer_groups_exact_lr_and_decay():
    model = tiny_model("segformer")
    groups = _by_name(parameter_groups(model, learning_rate=6e-5, weight_decay=0.01, head_lr_mult=10))
    assert set(groups) == {name for name, _ in model.named_parameters()}
    for name, parameter in model.named_parameters():
        group = groups[name]
        expected_lr = 6e-4 if name.startswith("decode_head.") else 6e-5
        assert group["lr"] == pytest.approx(expected_lr), name
        norm_or_bias = name.endswith(".bias") or "norm" in name
        assert group["weight_decay"] == (0.0 if norm_or_bias else 0.01), name
        if parameter.ndim > 1:
            assert group["weight_decay"] == 0.01, f"{name} is a weight matrix and should decay"
    # decode_head.batch_norm (BatchNorm2d) and encoder LayerNorms are caught by module type as well as name.
    assert "decode_head.batch_norm.weight" in no_decay_parameter_names(model)
    assert len(parameter_groups(model, 1e-3, 0.01, head_lr_mult=1.0)) == 2  # no head split without a multiple


def test_upernet_head_includes_auxiliary_and_position_embeddings_do_not_decay():
    upernet = tiny_model("upernet")
    heads = head_parameter_names(upernet)
    assert any(n.startswith("auxiliary_head.") for n in heads) and any(n.startswith("decode_head.") for n in heads)
    assert not any(n.startswith("backbone.") for n in heads)
    dpt_overrides = {
        "hidden_size": 16,
        "num_hidden_layers": 4,
        "num_attention_heads": 1,
        "intermediate_size": 16,
        "image_size": 32,
        "patch_size": 16,
        "neck_hidden_sizes": [8, 8, 8, 8],
        "fusion_hidden_size": 8,
    }
    dpt = build_model(ModelArguments(model_type="dpt", config_overrides=json.dumps(dpt_overrides)), {0: "a", 1: "b"})
    no_decay = no_decay_parameter_names(dpt)
    embeddings = [n for n, _ in dpt.named_parameters() if "position_embeddings" in n or n.endswith("cls_token")]
    assert embeddings and set(embeddings) <= no_decay


def _trainer(tmp_path, model, **kwargs):
    args = SegTrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, eval_strategy="no", save_strategy="no", **kwargs
    )
    return SegTrainer(model=model, args=args)


def test_trainer_optimizer_and_poly_schedule_keep_the_head_multiple(tmp_path):
    model = tiny_model("segformer")
    trainer = _trainer(
        tmp_path,
        model,
        learning_rate=1e-3,
        weight_decay=0.05,
        head_lr_mult=10.0,
        lr_scheduler_type="polynomial",
        lr_scheduler_kwargs={"power": 1.0, "lr_end": 0.0},
        warmup_steps=2,
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    initial = sorted((group["initial_lr"], group["weight_decay"]) for group in optimizer.param_groups)
    assert initial == [(1e-3, 0.0), (1e-3, 0.05), (1e-2, 0.0), (1e-2, 0.05)]
    head_ids = {id(p) for n, p in model.named_parameters() if n.startswith("decode_head.")}
    for _ in range(6):  # through warm-up and into the decay
        optimizer.step()
        trainer.lr_scheduler.step()
    for group in optimizer.param_groups:
        is_head = all(id(p) in head_ids for p in group["params"])
        base = 1e-2 if is_head else 1e-3
        assert group["lr"] == pytest.approx(base * (1 - (6 - 2) / (10 - 2)))  # linear warm-up then poly power 1


def test_sgd_momentum_from_training_arguments(tmp_path):
    model = tiny_model("segformer")
    trainer = _trainer(tmp_path, model, optim="sgd", optim_args="momentum=0.9", learning_rate=0.007, weight_decay=1e-4)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    assert {group["momentum"] for group in optimizer.param_groups} == {0.9}
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.0, 1e-4}


def test_layer_decay_follows_mmsegmentation_stage_wise_convnext_rule(tmp_path):
    """ConvNeXt UperNet with decay 0.9 and num_layers 6 (mmseg's config): stem and downsampling layers at
    0.9^7, stage s at 0.9^(6 - s), the backbone's output norms and both heads at the full lr (x head_lr_mult)."""
    model = tiny_model("upernet")
    trainer = _trainer(
        tmp_path, model, learning_rate=1e-4, weight_decay=0.05, layer_decay_rate=0.9, layer_decay_num_layers=6
    )
    trainer.create_optimizer()
    lr_of = {id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]}
    checked = set()
    for name, parameter in model.named_parameters():
        if not name.startswith("backbone."):
            expected = 1e-4
        elif name.startswith("backbone.embeddings.") or ".downsampling_layer." in name:
            expected = 1e-4 * 0.9**7
        elif name.startswith("backbone.encoder.stages."):
            stage = int(name.split(".")[3])
            expected = 1e-4 * 0.9 ** (6 - stage)
            checked.add(stage)
        else:
            assert name.startswith("backbone.hidden_states_norms."), name
            expected = 1e-4
        assert lr_of[id(parameter)] == pytest.approx(expected), name
    assert checked == {0, 1, 2, 3}
    # ConvNeXt's layer scale (gamma) is 1-D and does not decay, as in mmseg and the ConvNeXt paper.
    groups = trainer.optimizer.param_groups
    no_decay = {id(p) for group in groups if group["weight_decay"] == 0 for p in group["params"]}
    scales = [p for n, p in model.named_parameters() if n.endswith("layer_scale_parameter")]
    assert scales and all(id(p) in no_decay for p in scales)


def test_layer_decay_defaults_to_the_encoder_depth_and_off_means_one_lr():
    model = tiny_model("segformer")
    scales = layer_lr_scales(model, 0.5)  # 4 MiT stages: patch embeddings 0, stages.s -> s + 1, top 5
    for name, scale in scales.items():
        if not name.startswith("segformer."):
            assert scale == 1.0, name
        elif ".patch_embeddings." in name:
            assert scale == pytest.approx(0.5**5), name
        else:
            stage = int(name.split(".")[2])
            assert scale == pytest.approx(0.5 ** (4 - stage)), name
    assert scales["decode_head.classifier.weight"] == 1.0
    lrs = {group["lr"] for group in parameter_groups(model, 1e-3, 0.01, layer_decay_rate=1.0)}
    assert lrs == {1e-3}
    assert len({group["lr"] for group in parameter_groups(model, 1e-3, 0.01, layer_decay_rate=0.5)}) == 6
