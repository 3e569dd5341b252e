"""Deployment: a saved model exported to ONNX and checked against PyTorch (`hfseg export`), and the ONNX Runtime
model that `hfseg predict/evaluate --backend onnx` run.

Imports onnx/onnxruntime only inside functions (the `hfseg[export]` extra); no library module here imports a command.
"""
