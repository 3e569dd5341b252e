"""Input channels other than RGB: a pretrained encoder's first convolution adapted to N channels (timm's rule) and
the channel count recorded in the model config, so the saved model is fed as it was trained."""

from __future__ import annotations

import math

import torch
from torch import nn

from hfseg.errors import HfsegError


def adapt_input_conv(weight: torch.Tensor, num_channels: int) -> torch.Tensor:
    """`weight: (O, 3, k, k) -> (O, num_channels, k, k)`, as timm's `adapt_input_conv`.

    One channel: the sum over the RGB kernels (a gray image x gives the response the RGB image (x, x, x) gave).
    More than three: the RGB kernels repeated cyclically (R, G, B, R, ...) and scaled by 3 / num_channels, so an
    input of N equal channels keeps the pretrained response's scale. Three: unchanged.
    """
    if weight.shape[1] != 3:
        raise HfsegError(
            f"the first convolution takes {weight.shape[1]} channels, not 3; --num_channels adapts RGB encoders only"
        )
    if num_channels == 3:
        return weight
    if num_channels < 1:
        raise HfsegError(f"--num_channels is {num_channels}; give the number of image bands (1 or more)")
    dtype = weight.dtype
    weight = weight.float()
    if num_channels == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeat = math.ceil(num_channels / 3)
        adapted = weight.repeat(1, repeat, 1, 1)[:, :num_channels] * (3 / num_channels)
    return adapted.to(dtype)


def first_input_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The first `nn.Conv2d` that reads `config.num_channels` channels (the patch embedding of SegFormer, Swin,
    ConvNeXt, BEiT ...), with its dotted name."""
    expected = getattr(model.config, "num_channels", 3)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == expected:
            return name, module
    raise HfsegError(f"{type(model).__name__} has no convolution reading {expected} image channels to adapt")


def adapt_model_input_channels(model: nn.Module, num_channels: int) -> nn.Module:
    """Give a loaded model's first convolution `num_channels` inputs (`adapt_input_conv`), in place, and record the
    count in `config.num_channels` (and the backbone config's, for UperNet-style models)."""
    name, conv = first_input_conv(model)
    if conv.in_channels != num_channels:
        adapted = nn.Conv2d(
            num_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            adapted.weight.copy_(adapt_input_conv(conv.weight, num_channels))
            if conv.bias is not None:
                adapted.bias.copy_(conv.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, adapted)
        for module in model.modules():  # embeddings that check the channel count of their input
            if getattr(module, "num_channels", None) == conv.in_channels and not isinstance(module, nn.GroupNorm):
                module.num_channels = num_channels
    model.config.num_channels = num_channels
    backbone_config = getattr(model.config, "backbone_config", None)
    if backbone_config is not None and hasattr(backbone_config, "num_channels"):
        backbone_config.num_channels = num_channels
    return model
