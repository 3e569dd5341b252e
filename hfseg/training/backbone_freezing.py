"""`--freeze_backbone` / `--freeze_backbone_steps`: the encoder frozen for the whole run or its first N steps."""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from hfseg.models.freezing import set_backbone_frozen

logger = logging.getLogger(__name__)


class FreezeBackboneCallback(TrainerCallback):
    """Keeps the encoder of `model` frozen (weights and BatchNorm statistics) until `unfreeze_step` optimizer steps
    are done; `unfreeze_step=0` keeps it frozen for the whole run. A resumed run picks up the state of its step."""

    def __init__(self, model, unfreeze_step: int = 0):
        self.model = model
        self.unfreeze_step = unfreeze_step
        set_backbone_frozen(model, True)

    def frozen_at(self, step: int) -> bool:
        return self.unfreeze_step == 0 or step < self.unfreeze_step

    def on_train_begin(self, args, state, control, **kwargs):
        set_backbone_frozen(self.model, self.frozen_at(state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        if self.unfreeze_step and state.global_step == self.unfreeze_step:
            set_backbone_frozen(self.model, False)
            logger.info("step %d: backbone unfrozen (--freeze_backbone_steps)", state.global_step)
