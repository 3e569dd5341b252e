"""An exported ONNX model run by ONNX Runtime, standing in for the PyTorch model wherever hfseg's inference
takes one (`forward_logits`, `slide_logits`, `predict_logits`, `SegTrainer.evaluate`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoImageProcessor
from transformers.modeling_outputs import SemanticSegmenterOutput

from hfseg.errors import HfsegError

ONNX_NAME = "model.onnx"
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
EXPORT_EXTRA = "pip install 'hfseg[export]'"


def require_export_extra(what: str = "ONNX export") -> None:
    """Raise an `HfsegError` naming the extra when onnx or onnxruntime is not installed."""
    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise HfsegError(f"{what} needs {' and '.join(missing)}, which are not installed; run `{EXPORT_EXTRA}`")


def inference_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session on `path` (all graph optimisations; `threads` intra-op threads, default ORT's)."""
    require_export_extra("ONNX Runtime inference")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/NotImplemented types
        raise HfsegError(
            f"{path}: ONNX Runtime cannot load the model ({error}); export it again with hfseg export"
        ) from None


class OnnxSegmentationModel(torch.nn.Module):
    """`model(pixel_values=...)` -> `.logits`, computed by an ONNX Runtime session; holds the saved `config`.

    pixel_values: (B, 3, H, W) float -> logits: (B, C, h, w) float32 on the input's device. It has no parameters:
    `.to()`, `.eval()` and the Trainer's wrapping leave it as it is.
    """

    main_input_name = INPUT_NAME

    def __init__(self, session, config):
        super().__init__()
        self.session = session
        self.config = config
        self.input_type = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32

    def forward(self, pixel_values: torch.Tensor, **_) -> SemanticSegmenterOutput:
        array = pixel_values.detach().float().cpu().numpy().astype(self.input_type, copy=False)
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(array)})
        return SemanticSegmenterOutput(logits=torch.from_numpy(logits).float().to(pixel_values.device))


def load_onnx_for_inference(directory: str, threads: int | None = None):
    """(OnnxSegmentationModel, image processor) from an `hfseg export` output folder, as `load_for_inference`."""
    path = Path(directory) / ONNX_NAME
    if not path.is_file():
        raise HfsegError(
            f"--model {directory}: no {ONNX_NAME} there; --backend onnx takes the --output folder of "
            "`hfseg export RUN --format onnx` (or leave --backend out to run a saved PyTorch model)"
        )
    try:
        config = AutoConfig.from_pretrained(directory)
        processor = AutoImageProcessor.from_pretrained(directory)
    except (OSError, ValueError) as error:
        raise HfsegError(
            f"--model {directory}: config.json or preprocessor_config.json missing or unreadable ({error}); "
            "export the run again with hfseg export"
        ) from None
    return OnnxSegmentationModel(inference_session(path, threads), config).eval(), processor


BACKENDS = ("pytorch", "onnx")
BACKEND_HELP = {
    "help": "pytorch: a saved model (--model DIR or Hub id); onnx: the --output folder of `hfseg export` run by "
    "ONNX Runtime on the CPU (same inference modes and outputs).",
    "choices": list(BACKENDS),
}


def load_for_backend(name: str, backend: str = "pytorch", revision: str = "main", trust_remote_code: bool = False):
    """(model, image processor) for `hfseg predict/evaluate --backend`: a PyTorch model or an ONNX Runtime one."""
    if backend == "onnx":
        return load_onnx_for_inference(name)
    from hfseg.models.build import load_for_inference

    return load_for_inference(name, revision, trust_remote_code)
