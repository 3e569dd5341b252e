"""Evaluation and inference: the streaming confusion-matrix metric, whole/slide/TTA inference, the
image-segmentation pipeline, pictures, and the `hfseg evaluate` / `hfseg predict` commands.

`metrics` imports no Trainer and no `datasets`; no library module here imports a command module.
"""
