"""A PyTorch segmentation model -> ONNX with dynamic batch and spatial axes, in fp32, fp16 or int8.

Every family goes through `torch.onnx.export(dynamo=True)`. optimum's ONNX exporter (optimum-onnx) knows SegFormer's
semantic-segmentation task, but it requires transformers < 4.58 (hfseg is on transformers 5), and it does not cover
UperNet, DPT or the mask-classification models, so one exporter serves them all. Int8 is ONNX Runtime's quantisation:
dynamic (weights int8, activations quantised at run time) or static (QDQ, activations calibrated on sample images).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from hfseg.deploy.onnx_model import INPUT_NAME, OUTPUT_NAME, require_export_extra
from hfseg.errors import HfsegError

logger = logging.getLogger("hfseg")

DTYPES = ("fp32", "fp16")
QUANTIZATIONS = ("dynamic-int8", "static-int8")
EXPORTER = "torch.onnx.export (dynamo)"


class LogitsOnly(torch.nn.Module):
    """`pixel_values (B, 3, H, W) -> logits (B, C, h, w)`: the graph's one input and one output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def export_onnx(model, path: str | Path, example: torch.Tensor, opset: int = 18) -> Path:
    """Write `model` (fp32, eval mode) to `path` as ONNX; batch, height and width are dynamic axes.

    Args:
        example: (B, 3, H, W) pixel values to trace with (any size the model takes; the first image is used).
    """
    require_export_extra()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch, height, width = (torch.export.Dim(name) for name in ("batch", "height", "width"))
    # torch.export specialises a dimension of size 1 to a constant: trace with two images.
    example = example[:1].float().repeat(2, 1, 1, 1)
    try:
        program = torch.onnx.export(
            LogitsOnly(model.float().eval()).eval(),
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"pixel_values": {0: batch, 2: height, 3: width}},
            verbose=False,
        )
    except Exception as error:  # the exporter raises many types (TorchExportError, ConversionError, ...)
        raise HfsegError(
            f"torch.onnx.export could not export {type(model).__name__} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); run again with --debug for the exporter's report"
        ) from error
    program.save(str(path))
    return path


def convert_fp16(source: Path, target: Path) -> Path:
    """fp32 ONNX -> fp16 weights and compute, fp32 inputs and outputs (ONNX Runtime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over (1, 3, H, W) pixel-value arrays."""

    def __init__(self, images: Iterable[np.ndarray]):
        self.images = iter(images)

    def get_next(self):
        image = next(self.images, None)
        return None if image is None else {INPUT_NAME: image}


def quantize_int8(source: Path, target: Path, method: str, calibration: list[np.ndarray] | None = None) -> Path:
    """fp32 ONNX -> int8 with ONNX Runtime: `dynamic-int8` (weights; activations at run time) or `static-int8`
    (QDQ; activation ranges calibrated on `calibration`, a list of (1, 3, H, W) float32 arrays)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name(target.stem + ".prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    try:
        if method == "dynamic-int8":
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        elif method == "static-int8":
            if not calibration:
                raise HfsegError("--quantize static-int8 needs calibration images; the check data gave none")
            quantize_static(
                str(prepared),
                str(target),
                _CalibrationReader(calibration),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        else:
            raise HfsegError(f"--quantize {method}: choose one of {', '.join(QUANTIZATIONS)}")
    finally:
        prepared.unlink(missing_ok=True)
    return target
