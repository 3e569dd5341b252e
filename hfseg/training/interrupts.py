"""Stopping a run well: SIGINT/SIGTERM save a checkpoint and say how to resume; a NaN/inf loss stops the run."""

from __future__ import annotations

import logging
import signal
import threading

import torch
from transformers import TrainerCallback

from hfseg.data.determinism import SeededSamples, SetDatasetEpoch
from hfseg.errors import HfsegError
from hfseg.training.checkpoints import (
    checkpoint_step,
    complete_checkpoints,
    disk_error,
    latest_complete_checkpoint,
    non_finite_weight,
)

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(HfsegError):
    """The run was stopped by a signal after saving a checkpoint; exits 128 + the signal number."""

    debug_hint = False

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class NonFiniteLoss(HfsegError):
    """The training loss became NaN or infinite."""


class StopOnSignal(TrainerCallback):
    """On SIGINT/SIGTERM: finish the current optimizer step, save a checkpoint, stop training.

    A second signal gets the default behaviour (stop at once), for when saving itself hangs.
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        logger.warning(
            "received %s: saving a checkpoint after this step, then stopping (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
        return control


def train(trainer, resume_from_checkpoint: str | None = None):
    """`trainer.train()` that stops cleanly on SIGINT/SIGTERM and explains a full disk.

    A `SeededSamples` training set is told each epoch, so a resumed run redraws the same augmentations.

    Raises:
        TrainingInterrupted: after a signal, once the checkpoint is saved (message says how to resume).
        HfsegError: the disk filled up while saving.
    """
    if isinstance(trainer.train_dataset, SeededSamples):
        trainer.add_callback(SetDatasetEpoch(trainer.train_dataset))
    stopper = StopOnSignal()
    trainer.add_callback(stopper)
    stopper.install()
    try:
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    except Exception as error:  # torch and safetensors wrap a failed write in their own types
        explained = disk_error(error, "a checkpoint", trainer.args.output_dir)
        if explained is None:
            raise
        raise explained from error
    finally:
        stopper.restore()
        trainer.remove_callback(stopper)
    if stopper.received is not None:
        name = signal.Signals(stopper.received).name
        checkpoint = latest_complete_checkpoint(trainer.args.output_dir)
        raise TrainingInterrupted(
            f"stopped by {name} at step {trainer.state.global_step}; checkpoint saved to {checkpoint}. "
            "To resume, run the same command with --resume_from_checkpoint auto",
            stopper.received,
        )
    return result


class StopOnNonFiniteLoss(TrainerCallback):
    """Stops the run when a training loss is NaN/inf, naming the step and the learning rate.

    `record` runs every step and only updates flags on the loss's device (no host sync); `check` reads them,
    at the steps where the Trainer logs, evaluates, saves or stops (it reads the loss then anyway) and before
    every checkpoint, so a run never saves weights trained on garbage.
    """

    def __init__(self):
        self._step: torch.Tensor | None = None  # first bad step, -1 while all losses are finite
        self._learning_rate: torch.Tensor | None = None
        self._is_nan: torch.Tensor | None = None

    def record(self, loss: torch.Tensor, step: int, learning_rate: float) -> None:
        """Remember the first step whose loss is not finite; device ops only."""
        loss = loss.detach()
        if self._step is None:
            self._step = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._learning_rate = torch.zeros((), dtype=torch.float32, device=loss.device)
            self._is_nan = torch.zeros((), dtype=torch.bool, device=loss.device)
        first = (self._step < 0) & ~torch.isfinite(loss).all()
        self._step = torch.where(first, step, self._step)
        self._learning_rate = torch.where(first, learning_rate, self._learning_rate)
        self._is_nan = torch.where(first, torch.isnan(loss).any(), self._is_nan)

    def check(self, output_dir: str) -> None:
        """Raise `NonFiniteLoss` if a recorded loss was NaN/inf (one host sync)."""
        if self._step is None:
            return
        step = int(self._step)
        if step < 0:
            return
        value = "nan" if bool(self._is_nan) else "inf"
        where = last_good_checkpoint(output_dir, step - 1)  # checkpoint-(step - 1) holds the weights of `step`
        raise NonFiniteLoss(
            f"training loss is {value} at step {step} (learning rate {float(self._learning_rate):.3g}), stopped "
            "before training on garbage; lower --learning_rate (or add --warmup_steps / --max_grad_norm 1.0) and "
            f"check that the labels fit num_labels and --ignore_index{where}"
        )

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_log or control.should_evaluate or control.should_save or control.should_training_stop:
            self.check(args.output_dir)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        self.check(args.output_dir)
        return control


def current_learning_rate(trainer) -> float:
    """The scheduler's last learning rate (of the first parameter group), else `args.learning_rate`."""
    try:
        return float(trainer.lr_scheduler.get_last_lr()[0])
    except (AttributeError, AssertionError, IndexError):
        return trainer.args.learning_rate


def last_good_checkpoint(output_dir, step: int) -> str:
    """A clause naming the latest complete checkpoint that is good to resume from after a non-finite loss with the
    weights of `step`: saved before `step` (the checkpoint at `step` holds the weights that gave the loss) and with
    every weight finite. Newer ones are named with the reason they were passed over; empty when there are none."""
    passed_over = []
    for checkpoint in complete_checkpoints(output_dir):
        if checkpoint_step(checkpoint) == step:
            passed_over.append(f"not {checkpoint.name}: its weights gave this loss")
        elif checkpoint_step(checkpoint) > step:
            passed_over.append(f"not {checkpoint.name}: newer than the weights that gave this loss")
        elif (weight := non_finite_weight(checkpoint)) is not None:
            passed_over.append(f"not {checkpoint.name}: {weight} is not finite")
        else:
            after = f" ({'; '.join(passed_over)})" if passed_over else ""
            return f"; the last good checkpoint is {checkpoint}{after}"
    if passed_over:
        return f"; no checkpoint is good to resume from ({'; '.join(passed_over)}): start afresh"
    return ""
