"""Input channels: timm's first-convolution rule, and a pretrained RGB SegFormer adapted to 1 and 4 bands."""

import json

import pytest
import torch
from conftest import TINY_SEGFORMER, save_tiny_model
from transformers import AutoModelForSemanticSegmentation

from hfseg.config import ModelArguments
from hfseg.errors import HfsegError
from hfseg.models.build import build_model
from hfseg.models.channels import adapt_input_conv

ID2LABEL = {0: "membrane", 1: "cell"}


@pytest.mark.parametrize("num_channels", [1, 2, 4, 7])
def test_adapted_weights_follow_timm_rule(num_channels):
    from timm.models import adapt_input_conv as timm_adapt_input_conv

    weight = torch.randn(8, 3, 7, 7, generator=torch.Generator().manual_seed(num_channels))
    adapted = adapt_input_conv(weight, num_channels)
    assert adapted.shape == (8, num_channels, 7, 7)
    torch.testing.assert_close(adapted, timm_adapt_input_conv(num_channels, weight.clone()))
    if num_channels == 1:  # the sum of the RGB kernels, not their mean
        torch.testing.assert_close(adapted[:, 0], weight.sum(1))
    else:  # R, G, B, R, ... scaled by 3/N
        for channel in range(num_channels):
            torch.testing.assert_close(adapted[:, channel], weight[:, channel % 3] * 3 / num_channels)
    assert adapt_input_conv(weight, 3) is weight


def test_gray_image_gives_the_response_of_its_rgb_copy():
    conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    gray = torch.randn(1, 1, 9, 9)
    adapted = torch.nn.functional.conv2d(gray, adapt_input_conv(conv.weight.detach(), 1))
    torch.testing.assert_close(adapted, conv(gray.expand(1, 3, 9, 9)).detach())


def test_only_rgb_kernels_are_adapted():
    with pytest.raises(HfsegError, match="takes 4 channels, not 3"):
        adapt_input_conv(torch.zeros(8, 4, 3, 3), 1)


@pytest.mark.parametrize("num_channels", [1, 4])
def test_pretrained_rgb_segformer_is_adapted_and_saved_with_its_channel_count(tmp_path, num_channels):
    pretrained = save_tiny_model(tmp_path / "rgb", ID2LABEL)
    rgb_model = AutoModelForSemanticSegmentation.from_pretrained(pretrained)
    rgb_weight = rgb_model.segformer.stages[0].patch_embeddings.proj.weight.detach()
    model = build_model(ModelArguments(model_name_or_path=str(pretrained), num_channels=num_channels), ID2LABEL)
    conv = model.segformer.stages[0].patch_embeddings.proj
    assert conv.in_channels == num_channels and model.config.num_channels == num_channels
    torch.testing.assert_close(conv.weight.detach(), adapt_input_conv(rgb_weight, num_channels))
    with torch.no_grad():
        logits = model.eval()(pixel_values=torch.randn(1, num_channels, 64, 64)).logits
    assert logits.shape == (1, 2, 16, 16)
    model.save_pretrained(tmp_path / "adapted")
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "adapted")
    assert reloaded.config.num_channels == num_channels
    torch.testing.assert_close(reloaded.segformer.stages[0].patch_embeddings.proj.weight, conv.weight)


def test_random_init_model_reads_the_requested_channels():
    args = ModelArguments(model_type="segformer", config_overrides=json.dumps(TINY_SEGFORMER), num_channels=1)
    model = build_model(args, ID2LABEL)
    assert model.config.num_channels == 1
    assert model.segformer.stages[0].patch_embeddings.proj.in_channels == 1
