"""DINOv2 and DINOv3 encoders behind UperNet: evenly spaced layers by default, --out_indices, sizes rounded to the
patch size, pretrained backbone weights loaded, and a finetune run whose output the plain pipeline serves."""

import json
import logging

import pytest
import torch
from conftest import tiny_run_args
from transformers import AutoModelForSemanticSegmentation, Dinov2Config, Dinov2Model, DINOv3ViTConfig, DINOv3ViTModel

from hfseg.config import DataArguments, ModelArguments
from hfseg.errors import HfsegError
from hfseg.models.build import build_image_processor, build_model
from hfseg.models.vit_backbone import align_sizes_to_patch, default_out_indices, round_to_multiple
from hfseg.training.arguments import SegTrainingArguments

TINY_VIT = {"hidden_size": 16, "num_hidden_layers": 8, "num_attention_heads": 2, "intermediate_size": 32}
TINY_HEAD = {"hidden_size": 16, "auxiliary_channels": 8, "pool_scales": [1, 2]}
ID2LABEL = {0: "road", 1: "car", 2: "sky"}


def test_default_layers_are_evenly_spaced_and_end_at_the_last():
    assert default_out_indices(12) == [3, 6, 9, 12]  # ViT-S/B
    assert default_out_indices(24) == [6, 12, 18, 24]  # ViT-L
    assert default_out_indices(40) == [10, 20, 30, 40]  # ViT-g
    assert default_out_indices(2) == [1, 2]


def test_sizes_round_to_the_nearest_multiple_of_the_patch():
    assert [round_to_multiple(512, 14), round_to_multiple(504, 14), round_to_multiple(512, 16)] == [518, 504, 512]
    assert [round_to_multiple(64, 14), round_to_multiple(5, 14)] == [70, 14]


@pytest.mark.parametrize(
    ("backbone_config", "model_class", "patch"),
    [(Dinov2Config(patch_size=14, image_size=56, **TINY_VIT), Dinov2Model, 14),
     (DINOv3ViTConfig(patch_size=16, image_size=64, **TINY_VIT), DINOv3ViTModel, 16)],
)  # fmt: skip
def test_upernet_on_a_pretrained_vit_reads_even_layers_and_trains(tmp_path, backbone_config, model_class, patch):
    torch.manual_seed(0)
    pretrained = model_class(backbone_config)
    pretrained.save_pretrained(tmp_path / "vit")
    args = ModelArguments(
        model_type="upernet", backbone_name_or_path=str(tmp_path / "vit"), config_overrides=json.dumps(TINY_HEAD)
    )
    model = build_model(args, ID2LABEL)
    assert model.backbone.config.out_features == ["stage2", "stage4", "stage6", "stage8"]
    weights = pretrained.state_dict()
    assert all(torch.equal(tensor, weights[name]) for name, tensor in model.backbone.state_dict().items())
    pixels, labels = torch.randn(2, 3, 4 * patch, 4 * patch), torch.randint(0, 3, (2, 4 * patch, 4 * patch))
    features = model.backbone(pixels).feature_maps
    assert [tuple(f.shape) for f in features] == [(2, 16, 4, 4)] * 4  # one stride: the patch size
    output = model(pixel_values=pixels, labels=labels)
    output.loss.backward()
    assert output.logits.shape == (2, 3, 4 * patch, 4 * patch)
    first_layer = model.backbone.get_input_embeddings()
    first_layer = getattr(first_layer, "projection", first_layer)  # DINOv2 wraps its patch convolution
    assert first_layer.weight.grad.abs().sum() > 0, "the loss reaches the first layer of the encoder"
    chosen = build_model(ModelArguments(**{**vars(args), "out_indices": [1, 5, 8]}), ID2LABEL)
    assert chosen.backbone.config.out_features == ["stage1", "stage5", "stage8"]


def test_out_indices_outside_the_backbone_or_without_upernet_are_refused():
    overrides = {**TINY_HEAD, "backbone_config": {"model_type": "dinov2", **TINY_VIT}}
    args = ModelArguments(model_type="upernet", config_overrides=json.dumps(overrides), out_indices=[4, 6, 9])
    with pytest.raises(HfsegError, match="--out_indices 4 6 9: 9 is no stage of the 'dinov2' backbone, which has 8"):
        build_model(args, ID2LABEL)
    with pytest.raises(HfsegError, match="--out_indices 4 8: UperNet reads at least 3 stages"):
        build_model(ModelArguments(**{**vars(args), "out_indices": [4, 8]}), ID2LABEL)
    random_init = build_model(ModelArguments(**{**vars(args), "out_indices": None}), ID2LABEL)
    assert random_init.backbone.config.out_features == ["stage2", "stage4", "stage6", "stage8"]
    with pytest.raises(HfsegError, match="--out_indices 1 2 chooses the backbone layers of a --model_type upernet"):
        build_model(ModelArguments(model_type="segformer", out_indices=[1, 2]), ID2LABEL)


def test_crop_and_slide_sizes_round_to_the_patch_size_and_say_so(caplog):
    overrides = {**TINY_HEAD, "backbone_config": {"model_type": "dinov2", "patch_size": 14, **TINY_VIT}}
    model_args = ModelArguments(model_type="upernet", config_overrides=json.dumps(overrides), image_size=512)
    data_args = DataArguments(dataset_name="synthetic", crop_size=512)
    training_args = SegTrainingArguments(output_dir="unused", eval_mode="slide", eval_crop_size=512, eval_stride=341)
    processor = build_image_processor(model_args)
    with caplog.at_level(logging.INFO, logger="hfseg"):
        assert align_sizes_to_patch(model_args, data_args, training_args, processor) == 14
    assert (data_args.crop_size, training_args.eval_crop_size, training_args.eval_stride) == (518, 518, 336)
    assert processor.size == {"height": 518, "width": 518} and model_args.image_size == 518
    assert "--crop_size 512 -> 518: a multiple of the dinov2 backbone's patch size 14" in caplog.text
    segformer = ModelArguments(model_type="segformer")
    assert align_sizes_to_patch(segformer, data_args := DataArguments(crop_size=500), training_args, None) is None
    assert data_args.crop_size == 500, "other encoders keep their sizes"


@pytest.mark.slow
def test_dinov2_upernet_run_is_served_by_the_plain_pipeline(tmp_path, caplog):
    from PIL import Image
    from transformers import pipeline

    from hfseg.finetune import main

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(patch_size=14, image_size=56, **TINY_VIT)).save_pretrained(tmp_path / "vit")
    out = tmp_path / "run"
    flags = tiny_run_args(out, "--model_type", "upernet", "--config_overrides", json.dumps(TINY_HEAD),
                          "--backbone_name_or_path", str(tmp_path / "vit"), "--out_indices", "2", "4", "8",
                          "--max_steps", "2")  # fmt: skip
    with caplog.at_level(logging.INFO, logger="hfseg"):
        main(flags)
    assert "--crop_size 64 -> 70: a multiple of the dinov2 backbone's patch size 14" in caplog.text
    saved = json.loads((out / "config.json").read_text())
    assert saved["backbone_config"]["model_type"] == "dinov2" and "auto_map" not in saved  # no custom code
    assert saved["backbone_config"]["out_features"] == ["stage2", "stage4", "stage8"]
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 70, "width": 70}
    model = AutoModelForSemanticSegmentation.from_pretrained(out)
    assert type(model.backbone).__name__ == "Dinov2Backbone"
    segmenter = pipeline("image-segmentation", model=str(out))
    segments = segmenter(Image.new("RGB", (40, 30)))
    assert segments and all(segment["mask"].size == (40, 30) for segment in segments)
