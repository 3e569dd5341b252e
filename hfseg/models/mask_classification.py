"""Mask-classification models (Mask2Former, MaskFormer, OneFormer, EoMT) trained on semantic maps: their own
Hungarian-matched loss with the number of masks averaged over processes, its main and auxiliary parts, and
per-pixel class scores from their (class, mask) query outputs."""

from __future__ import annotations

import contextlib
import logging
import re

import torch
from torch import nn

from hfseg.data.mask_targets import SEMANTIC_TASK_TEXT, TextQueries, text_token_ids
from hfseg.errors import HfsegError

# Loss keys of the auxiliary (intermediate decoder layer) terms: `loss_dice_3`, `loss_cross_entropy_0`, ...
AUXILIARY_LOSS_KEY = re.compile(r"_\d+$")
#: Config attribute (saved in config.json) holding OneFormer's `task_inputs` for semantic segmentation: the token ids
#: of "the task is semantic", padded with 0 to `task_seq_len`, so that any code holding the model can run it.
TASK_INPUTS_ATTRIBUTE = "hfseg_task_inputs"

logger = logging.getLogger(__name__)


def fit_mask_classification_config(config) -> None:
    """Fit a mask-classification config to what transformers can train, before the model is built.

    MaskFormer's `use_auxiliary_loss` is set to false: transformers' MaskFormer stacks decoder hidden states it only
    keeps when asked for them (a TypeError mid-step), and those would be the decoder's raw input and un-normalised
    layers; `supervise_every_decoder_layer` computes the per-layer terms instead.

    A OneFormer config whose input projections would be lost is refused: transformers' `OneFormerTransformerModule`
    keeps them in a plain list, outside the state dict, so when `conv_dim != hidden_dim` (or `enforce_input_proj`)
    they are neither saved nor loaded, and a reloaded model computes with uninitialised weights."""
    if getattr(config, "model_type", None) == "maskformer" and getattr(config, "use_auxiliary_loss", False):
        logger.info(
            "MaskFormer: use_auxiliary_loss set to false (transformers' own per-layer loss fails); hfseg's trainer "
            "supervises every decoder layer itself (`supervise_every_decoder_layer`)"
        )
        config.use_auxiliary_loss = False
    if not needs_task_inputs(config):
        return
    if config.conv_dim != config.hidden_dim or config.enforce_input_proj:
        raise HfsegError(
            f"OneFormer config: conv_dim={config.conv_dim}, hidden_dim={config.hidden_dim}, enforce_input_proj="
            f"{config.enforce_input_proj}: transformers keeps the input projections this needs outside the model's "
            "weights (never saved nor loaded); set conv_dim equal to hidden_dim and enforce_input_proj false in "
            "--config_overrides"
        )


def needs_task_inputs(model_or_config) -> bool:
    """Whether the model's forward pass needs `task_inputs` (OneFormer)."""
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) == "oneformer"


def set_task_inputs(config, tokenizer) -> None:
    """Store the semantic task's token ids (`OneFormerProcessor`'s `task_inputs` for "semantic") in `config`."""
    ids = text_token_ids(tokenizer, [SEMANTIC_TASK_TEXT], config.task_seq_len)[0]
    setattr(config, TASK_INPUTS_ATTRIBUTE, ids.tolist())


def with_task_inputs(model, inputs: dict) -> dict:
    """`inputs` (with `pixel_values` (B, C, H, W)) plus, for OneFormer, `task_inputs` (B, task_seq_len) from its
    config; other models' inputs are returned as they are.

    Raises:
        HfsegError: a OneFormer whose config has no task token ids (not loaded through hfseg with its tokenizer).
    """
    if not needs_task_inputs(model):
        return inputs
    ids = getattr(model.config, TASK_INPUTS_ATTRIBUTE, None)
    if ids is None:
        raise HfsegError(
            f'this OneFormer model\'s config has no {TASK_INPUTS_ATTRIBUTE} (the token ids of "{SEMANTIC_TASK_TEXT}" '
            "that its forward pass needs); load it with hfseg.models.build.load_for_inference, or fine-tune it with "
            "hfseg finetune, which read its CLIP tokenizer"
        )
    pixel_values = inputs["pixel_values"]
    task_inputs = torch.tensor(ids, device=pixel_values.device).expand(pixel_values.shape[0], -1)
    return {**inputs, "task_inputs": task_inputs}


def text_queries_for(config, tokenizer, id2label: dict[int, str]) -> TextQueries | None:
    """The text queries of OneFormer's contrastive loss, which it computes when `config.is_training`; else None."""
    if tokenizer is None or not needs_task_inputs(config) or not getattr(config, "is_training", False):
        return None
    num_text = config.num_queries - config.text_encoder_n_ctx  # the text encoder's prompt fills the other queries
    return TextQueries(tokenizer, id2label, num_text, config.text_encoder_context_length)


def supervise_every_decoder_layer(model: nn.Module) -> None:
    """MaskFormer in training: class and mask predictions from every decoder layer, each matched and scored by the
    model's own loss (deep supervision, as the original MaskFormer and mmsegmentation train it). No effect on other
    models, nor in evaluation.

    The predictions of a layer are those of the last one: the decoder's final layer norm, then the model's class
    head and mask embedder against the pixel decoder's embeddings. They reach the model's loss as its
    `get_logits` returns them with `use_auxiliary_loss` (`layer_predictions`), which transformers' MaskFormer
    cannot compute itself (`fit_mask_classification_config`)."""
    for module in model.modules():
        if getattr(getattr(module, "config", None), "model_type", None) == "maskformer" and hasattr(
            module, "get_logits"
        ):
            _supervise_layers(module)


def _supervise_layers(model: nn.Module) -> None:
    if getattr(model, "_supervises_every_layer", False):
        return
    decoder = model.model.transformer_module.decoder
    layer_outputs: list[torch.Tensor] = []
    decoder.register_forward_pre_hook(lambda module, args: layer_outputs.clear())
    for layer in decoder.layers:
        layer.register_forward_hook(lambda module, args, output: layer_outputs.append(output))
    last_layer_logits = model.get_logits

    def get_logits(outputs):
        class_queries_logits, masks_queries_logits, auxiliary_logits = last_layer_logits(outputs)
        if model.training and not auxiliary_logits:
            pixel_embeddings = outputs.pixel_decoder_last_hidden_state
            auxiliary_logits = [layer_predictions(model, hidden, pixel_embeddings) for hidden in layer_outputs[:-1]]
        return class_queries_logits, masks_queries_logits, auxiliary_logits

    model.get_logits = get_logits
    model._supervises_every_layer = True


def layer_predictions(model: nn.Module, hidden_states: torch.Tensor, pixel_embeddings: torch.Tensor) -> dict:
    """A MaskFormer decoder layer's output (B, Q, C) -> its `class_queries_logits` (B, Q, K + 1) and
    `masks_queries_logits` (B, Q, h, w), as the model predicts from its last layer."""
    hidden_states = model.model.transformer_module.decoder.layernorm(hidden_states)
    mask_embeddings = model.mask_embedder(hidden_states)
    return {
        "masks_queries_logits": torch.einsum("bqc,bchw->bqhw", mask_embeddings, pixel_embeddings),
        "class_queries_logits": model.class_predictor(hidden_states),
    }


def follow_training_mode(model: nn.Module) -> None:
    """OneFormer's `config.is_training` switches on its text encoder (for the contrastive loss) and the dropout of
    its pixel decoder whatever `model.training` says; with this, both act in training mode only, so that evaluation
    needs no text inputs and is deterministic. No effect on other models."""
    if not needs_task_inputs(model) or not getattr(model.config, "is_training", False):
        return

    def follow(module, args) -> None:
        module.is_training = module.training

    # On each module that reads the flag (not only the top one: peft calls the wrapped model's forward directly).
    for module in model.modules():
        if hasattr(module, "is_training"):
            module.register_forward_pre_hook(follow)


@contextlib.contextmanager
def saved_for_inference(model: nn.Module):
    """While saving: OneFormer's `config.is_training` is false, so that the saved model loads without its text
    encoder and runs on `pixel_values` and `task_inputs` alone (transformers' pipeline gives it no text inputs)."""
    config = getattr(model, "config", None)
    is_training = getattr(config, "is_training", None)
    if not needs_task_inputs(model) or not is_training:
        yield
        return
    config.is_training = False
    try:
        yield
    finally:
        config.is_training = is_training


def check_mask_classification_options(model_type: str, task: str, training_args) -> None:
    """Refuse hfseg's per-pixel loss options, which a mask-classification model's own loss never reads."""
    if task == "binary":
        raise HfsegError(
            f"--task binary: a {model_type} model classifies masks, it has no one-logit head; drop --task binary "
            "(a 0/1 label set trains as two classes)"
        )
    changed = [
        f"--{name} {getattr(training_args, name)}"
        for name, defaults in (("loss", (None, "ce")), ("class_weights", (None,)), ("class_weighting", ("none",)))
        if getattr(training_args, name, defaults[0]) not in defaults
    ]
    if getattr(training_args, "label_smoothing", 0.0):
        changed.append(f"--label_smoothing {training_args.label_smoothing}")
    if changed:
        raise HfsegError(
            f"{', '.join(changed)}: a {model_type} model trains with its own loss (Hungarian matching, class "
            "cross-entropy + mask BCE + Dice; weights in its config: class_weight, mask_weight, dice_weight, "
            "no_object_weight); drop the flag or set those through --config_overrides"
        )


def criteria(model: nn.Module) -> list[nn.Module]:
    """The model's loss modules (`Mask2FormerLoss`, `MaskFormerLoss`, `OneFormerLoss`, `EomtLoss`)."""
    return [module for module in model.modules() if callable(getattr(module, "get_num_masks", None))]


def average_num_masks(class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The number of target masks per process, averaged over all processes (at least 1), that normalises the mask
    and Dice losses, so that 2 processes with half the batch each train like 1 process with all of it.

    transformers' own `get_num_masks` averages with accelerate's `reduce` (whose default is already the mean)
    and divides by the number of processes again: with N processes it normalised by 1/N of the masks.
    """
    num_masks = torch.as_tensor(float(sum(len(classes) for classes in class_labels)), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(num_masks)
        num_masks = num_masks / torch.distributed.get_world_size()
    return torch.clamp(num_masks, min=1)


def use_average_num_masks(model: nn.Module) -> None:
    """Every loss module of `model` normalises by `average_num_masks`."""
    for criterion in criteria(model):
        criterion.get_num_masks = average_num_masks


class LossParts:
    """The main and auxiliary parts of a mask-classification model's loss, caught from its loss modules.

    Mask2Former, MaskFormer and OneFormer compute every term in one call (auxiliary keys end in `_<layer>`); EoMT
    calls its loss once per supervised layer, the last layer's call being the main one. The terms are weighted
    in place after the call, so they are read after the forward pass (`pop`).
    """

    def __init__(self, model: nn.Module):
        self.calls: list[dict[str, torch.Tensor]] = []
        for criterion in criteria(model):
            criterion.register_forward_hook(self._record)

    def _record(self, module, inputs, output) -> None:
        self.calls.append(output)

    def pop(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(main, auxiliary) weighted loss of the last forward pass, detached; None when no loss was computed."""
        calls, self.calls = self.calls, []
        if not calls:
            return None
        main = sum(value for key, value in calls[-1].items() if not AUXILIARY_LOSS_KEY.search(key))
        total = sum(sum(terms.values()) for terms in calls)
        return main.detach(), (total - main).detach()
