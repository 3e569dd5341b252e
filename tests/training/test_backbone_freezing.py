"""--freeze_backbone: the encoder's weights and BatchNorm statistics stay bit-identical while the heads train;
--freeze_backbone_steps N unfreezes after N steps, and a run resumed past N matches an uninterrupted one."""

import copy
import json

import pytest
import torch
from conftest import TINY_UPERNET

from hfseg.config import ModelArguments, SegTrainingArguments
from hfseg.data.collate import collate_segmentation
from hfseg.data.determinism import seed_samples
from hfseg.data.labels import LabelSpec
from hfseg.data.preprocess import attach_transform
from hfseg.data.synthetic import SYNTHETIC_ID2LABEL
from hfseg.data.transforms import TrainTransform
from hfseg.errors import HfsegError
from hfseg.models.build import build_model
from hfseg.models.freezing import backbone_parameter_names, set_backbone_frozen
from hfseg.training.trainer import SegTrainer

# A ResNet encoder: BatchNorm layers whose running statistics a frozen backbone must not update.
TINY_UPERNET_RESNET = {
    **TINY_UPERNET,
    "backbone_config": {
        "model_type": "resnet",
        "embedding_size": 8,
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 1, 1, 1],
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
}


def resnet_upernet():
    torch.manual_seed(0)
    args = ModelArguments(model_type="upernet", config_overrides=json.dumps(TINY_UPERNET_RESNET))
    return build_model(args, SYNTHETIC_ID2LABEL)


def make_trainer(model, dataset, output_dir, **overrides):
    values = {
        "output_dir": str(output_dir), "max_steps": 4, "per_device_train_batch_size": 4, "report_to": "none",
        "use_cpu": True, "eval_strategy": "no", "save_strategy": "no", "learning_rate": 1e-2, "seed": 0,
    }  # fmt: skip
    args = SegTrainingArguments(**{**values, **overrides})
    return SegTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate_segmentation)


@pytest.fixture(scope="module")
def train_dataset(tiny_synthetic):
    spec = LabelSpec(SYNTHETIC_ID2LABEL)
    dataset = attach_transform(tiny_synthetic["train"], "image", "annotation", spec, TrainTransform(32))
    return seed_samples(dataset, 0)  # the same augmentations after a resume


def encoder_state(model):
    return {name: tensor.clone() for name, tensor in model.backbone.state_dict().items()}


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics(train_dataset, tmp_path):
    model = resnet_upernet()
    before_encoder, before_head = encoder_state(model), copy.deepcopy(model.decode_head.state_dict())
    assert any("running_mean" in name for name in before_encoder), "the test needs BatchNorm in the encoder"
    make_trainer(model, train_dataset, tmp_path, freeze_backbone=True).train()
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, before_encoder[name]), f"backbone.{name} changed while frozen"
    head = model.decode_head.state_dict()
    changed = [name for name, tensor in head.items() if not torch.equal(tensor, before_head[name])]
    assert any(name.endswith("running_mean") for name in changed), "the head's BatchNorm statistics should train"
    assert any(name.endswith("weight") for name in changed), "the head's weights should train"


@pytest.mark.slow
def test_unfrozen_after_n_steps_and_resume_matches(train_dataset, tmp_path):
    """Frozen for 2 of 4 steps: the encoder moves after step 2; resumed from checkpoint-3, the same weights."""
    model = resnet_upernet()
    initial = encoder_state(model)
    trainer = make_trainer(model, train_dataset, tmp_path / "full", freeze_backbone_steps=2, save_strategy="steps",
                           save_steps=1, save_total_limit=None)  # fmt: skip
    trainer.train()
    at_step_2 = load_encoder(tmp_path / "full" / "checkpoint-2")
    assert all(torch.equal(at_step_2[name], initial[name]) for name in initial), "encoder moved while frozen"
    assert any(not torch.equal(tensor, initial[name]) for name, tensor in encoder_state(model).items())
    assert all(p.requires_grad for p in model.parameters())

    resumed = resnet_upernet()
    make_trainer(resumed, train_dataset, tmp_path / "full", freeze_backbone_steps=2).train(
        resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-1")
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), f"{name} differs after resume"


def load_encoder(checkpoint):
    from transformers import UperNetForSemanticSegmentation

    return encoder_state(UperNetForSemanticSegmentation.from_pretrained(str(checkpoint)))


def test_every_family_has_an_encoder_to_freeze():
    from conftest import tiny_model

    for model_type in ("segformer", "upernet"):
        model = tiny_model(model_type)
        set_backbone_frozen(model, True)
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        assert frozen == backbone_parameter_names(model) and frozen
        assert all(p.requires_grad for name, p in model.named_parameters() if name not in frozen)


def test_model_without_encoder_is_refused():
    with pytest.raises(HfsegError, match="--freeze_backbone: Linear has no separate encoder"):
        set_backbone_frozen(torch.nn.Linear(2, 2), True)
