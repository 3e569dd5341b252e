"""Deployment: a saved model exported to ONNX and checked against PyTorch (`hfseg export`), the ONNX Runtime
model that `hfseg predict/evaluate --backend onnx` run, and the Gradio web demo (`hfseg app`, app.py).

Imports onnx/onnxruntime only inside functions (the `hfseg[export]` extra); gradio only in app.py (the `hfseg[app]`
extra), which nothing else in hfseg imports; no library module here imports a command.
"""
