"""--peft lora: default targets per encoder, <= 15% of SegFormer-b0 trained, merged == unmerged predictions,
resume to the same weights, and a run whose output the plain pipeline loads, with the adapter saved alone."""

import json

import pytest
import torch
from conftest import TINY_UPERNET_SWIN, tiny_model, tiny_run_args

from hfseg.config import ModelArguments, SegTrainingArguments
from hfseg.data.collate import collate_segmentation
from hfseg.data.determinism import seed_samples
from hfseg.data.labels import LabelSpec
from hfseg.data.preprocess import attach_transform
from hfseg.data.synthetic import SYNTHETIC_ID2LABEL
from hfseg.data.transforms import EvalTransform, TrainTransform
from hfseg.errors import HfsegError
from hfseg.models.build import build_model
from hfseg.models.lora import apply_lora, merged_model, parameter_counts
from hfseg.training.trainer import SegTrainer


def test_segformer_b0_lora_trains_under_15_percent():
    """The peft guide's setting (r=32, alpha=32, query/value, decode_head in full) on SegFormer-b0, 150 classes."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    model = SegformerForSemanticSegmentation(SegformerConfig(num_labels=150))  # the b0 sizes are the defaults
    counts = parameter_counts(apply_lora(model, 32, 32, 0.1), "lora")
    assert 0.05 < counts["share"] <= 0.15, counts
    assert counts["total"] > 3_700_000  # b0: 3.7M parameters, plus the adapters


TINY_UPERNET_DINOV2 = {
    "hidden_size": 16, "auxiliary_channels": 8, "pool_scales": [1, 2],
    "backbone_config": {"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 4, "num_attention_heads": 2,
                        "intermediate_size": 32, "patch_size": 14, "image_size": 56},
}  # fmt: skip


@pytest.mark.parametrize("family", ["segformer", "upernet_convnext", "upernet_swin", "upernet_dinov2"])
def test_default_targets_adapt_the_encoder_and_train_the_heads(family):
    if family in ("upernet_swin", "upernet_dinov2"):
        overrides = TINY_UPERNET_SWIN if family == "upernet_swin" else TINY_UPERNET_DINOV2
        args = ModelArguments(model_type="upernet", config_overrides=json.dumps(overrides))
        model = build_model(args, {i: str(i) for i in range(3)})
    else:
        model = tiny_model(family.split("_")[0])
    prefix = "segformer." if family == "segformer" else "backbone."
    peft_model = apply_lora(model, 4, 8, 0.0)
    trainable = [name for name, p in peft_model.get_base_model().named_parameters() if p.requires_grad]
    adapters = [name for name in trainable if "lora_" in name]
    assert adapters and all(name.startswith(prefix) for name in adapters)
    assert all("lora_" in name for name in trainable if name.startswith(prefix)), "base encoder weights must be frozen"
    assert any(name.startswith("decode_head.") for name in trainable), "the decode head trains in full"


def test_unknown_target_names_are_refused():
    with pytest.raises(HfsegError, match="--lora_target_modules query value: no module of the segformer encoder"):
        apply_lora(tiny_model("segformer"), 4, 8, 0.0, ["query", "value"])


def make_trainer(model, dataset, output_dir, **overrides):
    values = {
        "output_dir": str(output_dir), "max_steps": 4, "per_device_train_batch_size": 4, "report_to": "none",
        "use_cpu": True, "eval_strategy": "no", "save_strategy": "no", "learning_rate": 5e-2, "seed": 0,
    }  # fmt: skip
    return SegTrainer(
        model=model,
        args=SegTrainingArguments(**{**values, **overrides}),
        train_dataset=dataset,
        data_collator=collate_segmentation,
    )


@pytest.fixture(scope="module")
def datasets(tiny_synthetic):
    spec = LabelSpec(SYNTHETIC_ID2LABEL)
    train = attach_transform(tiny_synthetic["train"], "image", "annotation", spec, TrainTransform(32))
    validation = attach_transform(tiny_synthetic["validation"], "image", "annotation", spec, EvalTransform(64))
    return seed_samples(train, 0), validation


def lora_segformer():
    torch.manual_seed(0)
    return apply_lora(tiny_model("segformer", num_labels=len(SYNTHETIC_ID2LABEL)), 4, 8, 0.0)


def test_merged_and_unmerged_give_the_same_argmax_on_the_validation_set(datasets, tmp_path):
    train, validation = datasets
    model = lora_segformer()
    make_trainer(model, train, tmp_path).train()
    adapters = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert any(p.abs().max() > 0 for p in adapters), "training should move the adapters off zero"
    pixels = torch.stack([example["pixel_values"] for example in validation])
    with torch.no_grad():
        unmerged = model.eval()(pixel_values=pixels).logits
        merged_plain = merged_model(model)
        merged = merged_plain.eval()(pixel_values=pixels).logits
    assert type(merged_plain).__name__ == "SegformerForSemanticSegmentation"
    assert not any("lora_" in name for name, _ in merged_plain.named_parameters())
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert torch.equal(merged.argmax(1), unmerged.argmax(1))


@pytest.mark.slow
def test_resumed_lora_run_matches_an_uninterrupted_one(datasets, tmp_path):
    train, _ = datasets
    model = lora_segformer()
    make_trainer(model, train, tmp_path, save_strategy="steps", save_steps=1, save_total_limit=None).train()
    assert (tmp_path / "checkpoint-2" / "adapter_model.safetensors").is_file()
    resumed = lora_segformer()
    make_trainer(resumed, train, tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), f"{name} differs after resume"


@pytest.mark.slow
def test_lora_run_saves_a_merged_model_the_pipeline_loads_and_the_adapter(tmp_path, shared_data):
    from PIL import Image
    from transformers import pipeline

    from hfseg.finetune import main

    out = tmp_path / "run"
    main(tiny_run_args(out, "--peft", "lora", "--lora_r", "4", "--lora_alpha", "8"))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in (out / "adapter").iterdir()}
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and adapter_config["modules_to_save"] == ["decode_head"]
    counts = json.loads((out / "trainable_parameters.json").read_text())
    assert counts["method"] == "lora" and 0 < counts["trainable"] < counts["total"]
    assert (
        f"trained parameters (lora): {counts['trainable']:,} of {counts['total']:,}" in (out / "README.md").read_text()
    )
    segmenter = pipeline("image-segmentation", model=str(out))
    assert segmenter(Image.new("RGB", (40, 30)))  # a plain transformers model: no peft needed to load it
