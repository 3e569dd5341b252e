"""The NaN/inf stop: flags kept on the loss's device every step, read only where the Trainer logs or saves."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerControl

from hfseg.models.losses import SegmentationLoss
from hfseg.training.interrupts import NonFiniteLoss, StopOnNonFiniteLoss


def test_loss_and_guard_read_nothing_on_the_host_per_step(host_reads):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    guard = StopOnNonFiniteLoss()
    for labels in (torch.randint(0, 3, (2, 8, 8)), torch.full((2, 8, 8), 255)):  # the second crop is all ignored
        for loss_fn in (SegmentationLoss("ce_dice"), SegmentationLoss("ce", class_weights=[0.5, 1.0, 2.0])):
            loss = loss_fn(logits.as_subclass(host_reads), labels.as_subclass(host_reads))
            guard.record(loss, step=1, learning_rate=0.1)
    assert host_reads.reads == []
    assert float(loss.detach()) == 0.0 and loss.requires_grad  # all ignored: zero loss with a graph
    host_reads.reads.clear()
    guard.check("unused")  # finite so far: no error
    assert host_reads.reads == ["__int__"]  # one read, at the check


def test_guard_raises_at_the_next_log_step_naming_the_first_bad_step(tmp_path):
    guard = StopOnNonFiniteLoss()
    for step, value in [(1, 0.5), (2, 0.4), (3, float("nan")), (4, float("inf"))]:
        guard.record(torch.tensor(value), step=step, learning_rate=0.25)
    quiet = TrainerControl()  # a step that neither logs, evaluates, saves nor stops: nothing is read
    guard.on_step_end(_Args(tmp_path), None, quiet)
    for flag in ("should_log", "should_evaluate", "should_save", "should_training_stop"):
        control = TrainerControl(**{flag: True})
        with pytest.raises(NonFiniteLoss, match=r"training loss is nan at step 3 \(learning rate 0\.25\)"):
            guard.on_step_end(_Args(tmp_path), None, control)
    with pytest.raises(NonFiniteLoss, match="at step 3"):
        guard.on_epoch_end(_Args(tmp_path), None, TrainerControl())


def test_guard_names_inf_and_the_last_good_checkpoint(tmp_path):
    guard = StopOnNonFiniteLoss()
    guard.record(torch.tensor([1.0, float("inf")]), step=7, learning_rate=1e-3)
    with pytest.raises(NonFiniteLoss, match=r"training loss is inf at step 7 \(learning rate 0\.001\)"):
        guard.check(str(tmp_path))


class _Args:
    def __init__(self, output_dir):
        self.output_dir = str(output_dir)
