"""Model zoo: every semantic-segmentation family builds from a tiny config, trains a step and takes a new label set;
a checkpoint that is not a segmentation model gets a clear error."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_SEGFORMER, TINY_UPERNET, TINY_UPERNET_SWIN

from hfseg.config import ModelArguments
from hfseg.errors import HfsegError
from hfseg.models.build import build_model
from hfseg.models.losses import SegmentationLoss

TINY_ZOO = {
    "segformer": TINY_SEGFORMER,
    "upernet": TINY_UPERNET,
    "upernet_swin": TINY_UPERNET_SWIN,
    "dpt": {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "image_size": 64,
        "patch_size": 16,
        "backbone_out_indices": [0, 1, 2, 3],
        "neck_hidden_sizes": [8, 8, 16, 16],
        "fusion_hidden_size": 16,
        "reassemble_factors": [4, 2, 1, 0.5],
        "head_in_index": -1,
    },
    "beit": {
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "image_size": 64,
        "patch_size": 16,
        "out_indices": [0, 1, 2, 3],
        "pool_scales": [1, 2],
        "auxiliary_channels": 8,
        "use_auxiliary_head": True,
        "use_relative_position_bias": True,
    },
    "mobilevit": {
        "image_size": 64,
        "hidden_sizes": [16, 16, 16],
        "neck_hidden_sizes": [8, 8, 8, 8, 8, 16, 16],
        "num_attention_heads": 2,
        "aspp_out_channels": 16,
        "atrous_rates": [1, 2, 3],
    },
    "mobilenet_v2": {"image_size": 64, "depth_multiplier": 0.25, "min_depth": 4},
}


def _model_args(name, **kwargs):
    model_type = "upernet" if name.startswith("upernet") else name
    return ModelArguments(model_type=model_type, config_overrides=json.dumps(TINY_ZOO[name]), **kwargs)


# segformer and upernet (ConvNeXt) run by default; the other families take longer to build, so they are slow tests.
FAST = ("segformer", "upernet")


@pytest.mark.parametrize(
    "name", [name if name in FAST else pytest.param(name, marks=pytest.mark.slow) for name in sorted(TINY_ZOO)]
)
def test_every_family_builds_trains_a_step_and_takes_a_new_label_set(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(_model_args(name), {0: "a", 1: "b", 2: "c"})
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"
    pixel_values, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    logits = model(pixel_values=pixel_values).logits
    assert logits.shape[:2] == (2, 3)
    loss = SegmentationLoss("ce")(logits, labels)  # upsampled to the labels' 64x64 whatever the output stride
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    # Fine-tune the saved checkpoint on another label set: the head is replaced, the encoder kept.
    model.save_pretrained(tmp_path / "checkpoint")
    new_labels = {0: "sky", 1: "road", 2: "car", 3: "person", 4: "tree"}
    tuned = build_model(ModelArguments(model_name_or_path=str(tmp_path / "checkpoint")), new_labels)
    assert tuned.config.num_labels == 5 and tuned.config.id2label == new_labels
    assert tuned.config.label2id["person"] == 3
    assert tuned(pixel_values=pixel_values).logits.shape[1] == 5
    encoder = tuned.base_model_prefix if name != "upernet" and not name.startswith("upernet") else "backbone"
    original = dict(model.named_parameters())
    kept = [n for n, p in tuned.named_parameters() if n.startswith(encoder + ".") and torch.equal(p, original[n])]
    assert len(kept) == sum(1 for n, _ in tuned.named_parameters() if n.startswith(encoder + "."))


def test_non_segmentation_checkpoint_is_a_clear_error(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16, image_size=32, patch_size=16
    )
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    with pytest.raises(HfsegError) as error:
        build_model(ModelArguments(model_name_or_path=str(tmp_path / "vit")), {0: "a", 1: "b"})
    message = str(error.value)
    assert "'vit' checkpoint, not a semantic-segmentation model" in message
    assert "segformer" in message and "upernet" in message and "mobilevit" in message


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(HfsegError, match="supported: .*segformer"):
        build_model(ModelArguments(model_type="vit"), {0: "a"})


def test_upernet_encoder_initialised_from_a_backbone_checkpoint(tmp_path):
    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(0)
    encoder = ConvNextModel(ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1]))
    encoder.save_pretrained(tmp_path / "convnext")
    args = ModelArguments(
        model_type="upernet",
        config_overrides=json.dumps(
            {
                "backbone_config": {"model_type": "convnext", "drop_path_rate": 0.2},
                "hidden_size": 16,
                "auxiliary_channels": 8,
                "pool_scales": [1, 2],
            }
        ),
        backbone_name_or_path=str(tmp_path / "convnext"),
    )
    model = build_model(args, {0: "a", 1: "b"})
    assert model.config.backbone_config.hidden_sizes == [8, 16, 24, 32]
    assert model.config.backbone_config.drop_path_rate == 0.2  # recipe settings apply on top of the checkpoint's
    stem = model.backbone.embeddings.patch_embeddings.weight
    assert torch.equal(stem, encoder.embeddings.patch_embeddings.weight)
    assert torch.equal(
        model.backbone.encoder.stages[3].layers[0].pwconv1.weight, encoder.encoder.stages[3].layers[0].pwconv1.weight
    )
    with pytest.raises(HfsegError, match="works with --model_type upernet"):
        build_model(ModelArguments(model_type="segformer", backbone_name_or_path=str(tmp_path / "convnext")), {0: "a"})


@pytest.mark.slow
def test_deeplab_recipe_start_imagenet_classifier_into_deeplabv3(tmp_path):
    """deeplab_voc starts from an ImageNet MobileNetV2 classifier: the encoder loads, the DeepLabV3 head is new."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    torch.manual_seed(0)
    config = MobileNetV2Config(image_size=64, depth_multiplier=0.25, min_depth=4, num_labels=10)
    classifier = MobileNetV2ForImageClassification(config)
    classifier.save_pretrained(tmp_path / "classifier")
    args = ModelArguments(model_name_or_path=str(tmp_path / "classifier"), config_overrides='{"output_stride": 16}')
    model = build_model(args, {i: f"c{i}" for i in range(21)})
    assert type(model).__name__ == "MobileNetV2ForSemanticSegmentation" and model.config.output_stride == 16
    assert torch.equal(model.mobilenet_v2.conv_stem.first_conv.convolution.weight,
                       classifier.mobilenet_v2.conv_stem.first_conv.convolution.weight)  # fmt: skip
    assert model(pixel_values=torch.randn(1, 3, 64, 64)).logits.shape[1] == 21


def test_loaded_weights_live_in_aligned_memory(saved_tiny_model):
    """Weights read from safetensors are copied out of the file's buffer into 64-byte aligned memory, where CPU
    kernels round as they do for a model built in memory."""
    from hfseg.models.build import ALIGNMENT_BYTES, load_for_inference

    model, _ = load_for_inference(str(saved_tiny_model))
    tensors = [*model.parameters(), *model.buffers()]
    assert tensors and all(tensor.data_ptr() % ALIGNMENT_BYTES == 0 for tensor in tensors)


@pytest.mark.parametrize("damage", ["no_config", "no_weights", "truncated_weights"])
def test_damaged_saved_model_is_named_by_predict_and_evaluate(saved_tiny_model, tmp_path, capsys, damage):
    import shutil

    from hfseg.evaluation.evaluate_model import main as evaluate_main
    from hfseg.evaluation.predict import main as predict_main

    model_dir = Path(shutil.copytree(saved_tiny_model, tmp_path / "run"))
    weights = model_dir / "model.safetensors"
    if damage == "no_config":
        (model_dir / "config.json").unlink()
        expected = f"--model {model_dir} has no config.json (found: model.safetensors, preprocessor_config.json)"
    elif damage == "no_weights":
        weights.unlink()
        expected = f"--model {model_dir} has no model weights (no model.safetensors"
    else:
        weights.write_bytes(weights.read_bytes()[:-100])
        expected = f"{weights} is truncated or not a safetensors file"
    commands = {
        predict_main: ["--input", str(tmp_path), "--output", str(tmp_path / "out")],
        evaluate_main: ["--dataset_name", "synthetic", "--output_dir", str(tmp_path / "eval")],
    }
    for command, flags in commands.items():
        with pytest.raises(SystemExit) as exit_info:
            command(["--model", str(model_dir), *flags])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err, err[-2000:]
        assert expected in err and "model_type" not in err, err[-2000:]
