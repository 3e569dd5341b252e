"""Models: building and loading segmentation models and processors, losses, optimizer parameter groups.

Sees tensors and configs, not files of data: never imports the data adapters, `datasets`, evaluation or a command.
"""
