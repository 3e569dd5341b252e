"""`SegTrainingArguments`: `transformers.TrainingArguments` plus hfseg's own fields, with segmentation defaults.

Kept apart from hfseg/config.py because `TrainingArguments` imports torch: `hfseg doctor`, `hfseg --help` and
errors in hfseg's own flags answer without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from hfseg.config import SegmentationArguments
from hfseg.errors import HfsegError


@dataclass
class SegTrainingArguments(TrainingArguments, SegmentationArguments):
    """`TrainingArguments` with what segmentation needs set by default."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Where checkpoints and the final model go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output_dir that already holds another run."}
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep image/label columns for transforms."})
    batch_eval_metrics: bool = field(default=True, metadata={"help": "Stream eval metrics batch by batch."})
    eval_strategy: IntervalStrategy | str = field(
        default="epoch", metadata={"help": "When to evaluate: no, steps or epoch."}
    )
    save_strategy: SaveStrategy | str = field(
        default="epoch", metadata={"help": "When to save checkpoints: no, steps or epoch."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data-loading worker processes."})
    dataloader_persistent_workers: bool = field(
        default=True,
        metadata={
            "help": "Keep data-loading workers alive between epochs and evaluations instead of starting them again "
            "(on whenever --dataloader_num_workers > 0)."
        },
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Trainer's NaN/inf filter of logged losses; off because it syncs the device every step and a "
            "NaN/inf loss stops an hfseg run anyway."
        },
    )
    label_smoothing_factor: float = field(
        default=0.0,
        metadata={"help": "Trainer's name, not read by hfseg's loss: use --label_smoothing (an error when set)."},
    )

    def __post_init__(self):
        if not self.dataloader_num_workers:
            self.dataloader_persistent_workers = False  # no worker to keep: torch's DataLoader refuses the pair
        if self.label_smoothing_factor:
            # Trainer would smooth through its own LabelSmoother, which SegTrainer's loss never calls.
            raise HfsegError(
                f"--label_smoothing_factor {self.label_smoothing_factor} is Trainer's name and hfseg's loss does not "
                f"read it; use --label_smoothing {self.label_smoothing_factor} instead"
            )
        super().__post_init__()
