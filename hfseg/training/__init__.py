"""Training: `SegTrainer` (a `transformers.Trainer`), atomic checkpoints, resume, signals and non-finite loss stops.

May import data, models and evaluation; never imports a command or Hub publishing code.
"""
