"""Mask-classification models (Mask2Former, MaskFormer, OneFormer, EoMT) on semantic-map targets: their own loss stays
defined on batches without a labelled pixel, its main/auxiliary parts add up, the number of masks is averaged (not
divided twice) over processes, and query outputs become per-pixel class scores. OneFormer's task and text inputs are
those transformers' OneFormerProcessor builds."""

import json
import socket
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_MASK_CLASSIFICATION, TINY_SEGFORMER

from hfseg.config import ModelArguments
from hfseg.data.collate import collate_segmentation
from hfseg.errors import HfsegError
from hfseg.models.build import build_model, build_tokenizer, is_mask_classification, load_for_inference
from hfseg.models.mask_classification import (
    LossParts,
    check_mask_classification_options,
    follow_training_mode,
    layer_predictions,
    supervise_every_decoder_layer,
    text_queries_for,
    use_average_num_masks,
    with_task_inputs,
)

ID2LABEL = {0: "road", 1: "car", 2: "sky"}


def tiny_mask_classification_model(model_type: str, tokenizer_dir=None):
    """A tiny model built as `hfseg finetune` builds it; OneFormer with the tokenizer in `tokenizer_dir` (its task
    inputs in its config, `text_queries` for its contrastive loss) and its training-only parts following the mode."""
    overrides = json.dumps(TINY_MASK_CLASSIFICATION[model_type])
    tokenizer_name = str(tokenizer_dir) if model_type == "oneformer" else None
    args = ModelArguments(model_type=model_type, config_overrides=overrides, tokenizer_name_or_path=tokenizer_name)
    model = build_model(args, ID2LABEL)
    model.text_queries = text_queries_for(model.config, build_tokenizer(args, model.config), ID2LABEL)
    follow_training_mode(model)
    supervise_every_decoder_layer(model)
    return model


@pytest.fixture(scope="module", params=sorted(TINY_MASK_CLASSIFICATION))
def tiny_family(request, tiny_clip_tokenizer):
    torch.manual_seed(0)
    return tiny_mask_classification_model(request.param, tiny_clip_tokenizer)


def batch_of(labels: list[torch.Tensor], text_queries=None) -> dict:
    examples = [{"pixel_values": torch.randn(3, 64, 64), "labels": label} for label in labels]
    return collate_segmentation(examples, ignore_index=255, mask_targets=True, text_queries=text_queries)


def model_inputs(model, batch: dict) -> dict:
    """What SegTrainer gives the model: pixels, targets, OneFormer's text inputs and (`with_task_inputs`) task."""
    names = ("pixel_values", "mask_labels", "class_labels", "text_inputs")
    return with_task_inputs(model, {name: batch[name] for name in names if name in batch})


def test_is_mask_classification_tells_the_families_apart(tiny_family):
    assert is_mask_classification(tiny_family) and is_mask_classification(tiny_family.config)
    segformer = build_model(
        ModelArguments(model_type="segformer", config_overrides=json.dumps(TINY_SEGFORMER)), ID2LABEL
    )
    assert not is_mask_classification(segformer) and not is_mask_classification(segformer.config)
    assert tiny_family.config.id2label == ID2LABEL


def test_all_ignore_batch_gives_finite_loss_and_gradients(tiny_family):
    batch = batch_of([torch.full((64, 64), 255), torch.full((64, 64), 255)], tiny_family.text_queries)
    assert [len(classes) for classes in batch["class_labels"]] == [0, 0]
    tiny_family.train()
    tiny_family.zero_grad()
    outputs = tiny_family(**model_inputs(tiny_family, batch))
    assert torch.isfinite(outputs.loss) and outputs.loss > 0  # "no object" for every query is still a loss
    outputs.loss.backward()
    grads = [p.grad for p in tiny_family.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)


def test_loss_parts_add_up_to_the_loss(tiny_family):
    parts = LossParts(tiny_family)
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[:, 32:] = 2
    labels[:8] = 255
    batch = batch_of([labels, torch.full((64, 64), 1)], tiny_family.text_queries)
    tiny_family.train()
    outputs = tiny_family(**model_inputs(tiny_family, batch))
    main, auxiliary = parts.pop()
    assert torch.allclose(main + auxiliary, outputs.loss.detach(), rtol=1e-5)
    assert main > 0
    assert auxiliary > 0  # the earlier decoder layers (EoMT: the earlier blocks)
    assert parts.pop() is None  # read once


def test_per_pixel_loss_options_and_binary_task_are_refused():
    defaults = SimpleNamespace(loss="ce", class_weights=None, class_weighting="none", label_smoothing=0.0)
    check_mask_classification_options("mask2former", "multiclass", defaults)
    with pytest.raises(HfsegError, match=r"--loss ce_dice.*own loss.*--config_overrides"):
        check_mask_classification_options(
            "mask2former", "multiclass", SimpleNamespace(**{**vars(defaults), "loss": "ce_dice"})
        )
    with pytest.raises(HfsegError, match="--task binary"):
        check_mask_classification_options("eomt", "binary", defaults)


def _num_masks_on_rank(rank: int, port: int, counts: list[int], out_dir: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank))
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    from accelerate import PartialState
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    state = PartialState(cpu=True, backend="gloo")  # as `accelerate launch` sets up 2 CPU processes
    criterion = Mask2FormerLoss(Mask2FormerConfig(num_labels=3), weight_dict={})
    holder = torch.nn.ModuleDict({"criterion": criterion})
    use_average_num_masks(holder)
    class_labels = [torch.zeros(counts[rank], dtype=torch.long)]
    num_masks = criterion.get_num_masks(class_labels, torch.device("cpu"))
    with open(f"{out_dir}/rank{rank}.json", "w") as file:
        json.dump({"num_masks": num_masks.item(), "num_processes": state.num_processes}, file)
    state.destroy_process_group()


@pytest.mark.slow
def test_num_masks_is_the_mean_over_processes(tmp_path):
    """3 masks on one process and 5 on the other normalise both by 4, as 8 masks on 1 process with a batch twice
    the size normalise by 8 over a loss twice as large (transformers' own count gives 2: mean, then / processes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.spawn(_num_masks_on_rank, args=(port, [3, 5], str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [result["num_processes"] for result in results] == [2, 2]
    assert [result["num_masks"] for result in results] == [4.0, 4.0]


def training_step_batch(model=None) -> dict:
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[20:, 10:50] = 1
    batch = batch_of([labels, torch.full((64, 64), 2)], getattr(model, "text_queries", None))
    if model is not None:
        return model_inputs(model, batch)
    return {key: batch[key] for key in ("pixel_values", "mask_labels", "class_labels")}


@pytest.mark.parametrize("model_type", ["mask2former", "maskformer", "oneformer"])
def test_freeze_backbone_freezes_only_the_image_encoder(model_type, tiny_clip_tokenizer):
    from hfseg.models.freezing import backbone_parameter_names, set_backbone_frozen

    model = tiny_mask_classification_model(model_type, tiny_clip_tokenizer)
    encoder = {name for name, _ in model.named_parameters() if name.startswith("model.pixel_level_module.encoder.")}
    assert encoder and backbone_parameter_names(model) == encoder
    set_backbone_frozen(model, True)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and not trainable & encoder
    assert any(name.startswith("model.pixel_level_module.decoder.") for name in trainable)  # pixel decoder trains
    classifier = [name for name in trainable if "class_predictor" in name or "class_embed" in name]
    assert classifier  # the class head trains
    model.train()
    model(**training_step_batch(model)).loss.backward()
    assert all(parameter.grad is None for name, parameter in model.named_parameters() if name in encoder)
    assert all(model.get_parameter(name).grad is not None for name in classifier)


@pytest.mark.parametrize("model_type", ["mask2former", "oneformer"])
def test_lora_adapts_the_swin_encoder_and_trains_the_heads_in_full(model_type, tiny_clip_tokenizer):
    from hfseg.models.lora import apply_lora, merged_model

    model = tiny_mask_classification_model(model_type, tiny_clip_tokenizer)
    model_class = type(model).__name__
    peft_model = apply_lora(model, rank=4, alpha=8, dropout=0.0)
    trainable = [name for name, parameter in peft_model.named_parameters() if parameter.requires_grad]
    lora = [name for name in trainable if "lora_" in name]
    assert lora and all(".pixel_level_module.encoder." in name for name in lora)
    assert any(".transformer_module." in name and "lora_" not in name for name in trainable)  # decoder in full
    assert not any(".pixel_level_module.encoder." in name for name in trainable if "lora_" not in name)
    peft_model.train()
    loss = peft_model(**training_step_batch(model)).loss
    assert torch.isfinite(loss)
    loss.backward()
    merged = merged_model(peft_model).eval()
    assert type(merged).__name__ == model_class and is_mask_classification(merged)
    assert not any("lora_" in name for name, _ in merged.named_parameters())


def test_oneformer_needs_a_tokenizer_and_keeps_its_input_projections(tiny_clip_tokenizer):
    overrides = json.dumps(TINY_MASK_CLASSIFICATION["oneformer"])
    args = ModelArguments(model_type="oneformer", config_overrides=overrides)
    model = build_model(args, ID2LABEL)
    with pytest.raises(HfsegError, match=r"--model_type oneformer.*task_inputs.*--tokenizer_name_or_path"):
        build_tokenizer(args, model.config)
    segformer_args = ModelArguments(
        model_type="segformer", config_overrides=json.dumps(TINY_SEGFORMER), tokenizer_name_or_path="x"
    )
    with pytest.raises(HfsegError, match="--tokenizer_name_or_path x: a segformer model reads no text"):
        build_tokenizer(segformer_args, build_model(segformer_args, ID2LABEL).config)
    narrow = json.dumps({**TINY_MASK_CLASSIFICATION["oneformer"], "conv_dim": 32})
    with pytest.raises(HfsegError, match="conv_dim=32, hidden_dim=64.*never saved nor loaded"):
        build_model(ModelArguments(model_type="oneformer", config_overrides=narrow), ID2LABEL)


def test_oneformer_task_and_text_inputs_are_the_processors(tiny_clip_tokenizer, tmp_path):
    """Token ids of "the task is semantic" and of each image's text queries, as transformers' OneFormerProcessor
    builds them from a semantic map (its class names from a class-info file)."""
    import numpy as np
    from PIL import Image
    from transformers import AutoTokenizer, OneFormerImageProcessor, OneFormerProcessor

    model = tiny_mask_classification_model("oneformer", tiny_clip_tokenizer)
    config = model.config
    num_text = config.num_queries - config.text_encoder_n_ctx
    (tmp_path / "classes.json").write_text(
        json.dumps({str(k): {"name": name, "isthing": 0} for k, name in ID2LABEL.items()})
    )
    image_processor = OneFormerImageProcessor(
        repo_path=str(tmp_path), class_info_file="classes.json", num_text=num_text, ignore_index=255,
        size={"height": 64, "width": 64},
    )  # fmt: skip
    processor = OneFormerProcessor(
        image_processor, AutoTokenizer.from_pretrained(tiny_clip_tokenizer),
        max_seq_length=config.text_encoder_context_length, task_seq_length=config.task_seq_len,
    )  # fmt: skip
    labels = torch.full((64, 64), 255)
    labels[:, :20], labels[:, 40:] = 2, 0
    expected = processor(
        images=[Image.new("RGB", (64, 64))], task_inputs=["semantic"],
        segmentation_maps=[Image.fromarray(labels.numpy().astype(np.uint8))], return_tensors="pt",
    )  # fmt: skip
    batch = batch_of([labels], model.text_queries)
    assert batch["class_labels"][0].tolist() == expected["class_labels"][0].tolist() == [0, 2]
    assert torch.equal(batch["text_inputs"], expected["text_inputs"])
    assert batch["text_inputs"].shape == (1, num_text, config.text_encoder_context_length)
    assert torch.equal(model_inputs(model, batch)["task_inputs"], expected["task_inputs"])


def test_mask2former_encoder_initialised_from_an_imagenet_swin(tmp_path):
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(0)
    swin = dict(TINY_MASK_CLASSIFICATION["mask2former"]["backbone_config"])
    del swin["model_type"], swin["out_features"]
    encoder = SwinModel(SwinConfig(**swin))
    encoder.save_pretrained(tmp_path / "swin")
    overrides = {
        key: value for key, value in TINY_MASK_CLASSIFICATION["mask2former"].items() if key != "backbone_config"
    }
    args = ModelArguments(
        model_type="mask2former",
        config_overrides=json.dumps({**overrides, "backbone_config": {"model_type": "swin", "drop_path_rate": 0.1}}),
        backbone_name_or_path=str(tmp_path / "swin"),
    )
    model = build_model(args, ID2LABEL)
    assert model.config.backbone_config.embed_dim == 16 and model.config.backbone_config.drop_path_rate == 0.1
    loaded = model.model.pixel_level_module.encoder.state_dict()
    for name in (
        "embeddings.patch_embeddings.projection.weight",
        "encoder.layers.3.blocks.0.attention.q_proj.weight",
    ):
        (match,) = [key for key in loaded if key.endswith(name)]
        assert torch.equal(loaded[match], encoder.get_parameter(name)), name
    model.train()
    assert torch.isfinite(model(**training_step_batch()).loss)


def test_seg_trainer_takes_the_own_loss_as_a_batch_mean_under_accumulation(tmp_path):
    """EoMT's forward accepts **kwargs, so plain Trainer would pass it num_items_in_batch and take its loss as already
    scaled for gradient accumulation (too large by the number of accumulation steps); SegTrainer does not."""
    from hfseg.config import SegTrainingArguments
    from hfseg.training.trainer import SegTrainer

    model = tiny_mask_classification_model("eomt")
    args = SegTrainingArguments(
        output_dir=str(tmp_path), gradient_accumulation_steps=2, report_to="none", use_cpu=True, eval_strategy="no"
    )
    trainer = SegTrainer(model=model, args=args)
    assert trainer.model_accepts_loss_kwargs is False and trainer.loss_parts is not None
    with pytest.raises(HfsegError, match="trains with its own loss"):
        SegTrainer(model=model, args=args, loss_fn=lambda logits, labels, auxiliary: logits.sum())


def test_oneformer_checkpoint_processor_loses_its_class_info_file(saved_tiny_oneformer, tmp_path):
    """A Hub OneFormer processor names a class-info file in a Hub data set (shi-labs/oneformer_demo), which
    transformers downloads as the processor loads; hfseg takes the class names from id2label, so it loads the
    processor without it (no download: the test fails on any connection) and the saved processor names none."""
    import shutil

    from hfseg.models.build import build_image_processor

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(saved_tiny_oneformer, checkpoint)
    config = json.loads((checkpoint / "preprocessor_config.json").read_text())
    config.update(class_info_file="ade20k_panoptic.json", repo_path="shi-labs/oneformer_demo", num_text=134)
    (checkpoint / "preprocessor_config.json").write_text(json.dumps({**config, "num_labels": 150}))
    processor = build_image_processor(ModelArguments(model_name_or_path=str(checkpoint)))
    processor.save_pretrained(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "preprocessor_config.json").read_text())
    assert not {"class_info_file", "num_text", "num_labels", "metadata"} & set(saved)
    _, loaded = load_for_inference(str(checkpoint))  # hfseg evaluate / predict on such a checkpoint
    assert type(loaded).__name__.startswith("OneFormerImageProcessor") and loaded.class_info_file is None


def test_oneformer_loss_counts_masks_with_hfseg_average(tiny_clip_tokenizer):
    """OneFormer's own loss module is found and normalised like the others (one process: the batch's mask count)."""
    from hfseg.models.mask_classification import average_num_masks, criteria

    model = tiny_mask_classification_model("oneformer", tiny_clip_tokenizer)
    assert [type(criterion).__name__ for criterion in criteria(model)] == ["OneFormerLoss"]
    use_average_num_masks(model)
    assert model.criterion.get_num_masks is average_num_masks
    class_labels = [torch.zeros(3, dtype=torch.long), torch.zeros(5, dtype=torch.long)]
    assert model.criterion.get_num_masks(class_labels, torch.device("cpu")).item() == 8.0


def test_maskformer_supervises_every_decoder_layer_with_its_last_layers_heads(caplog):
    """transformers' MaskFormer raises a TypeError mid-step with use_auxiliary_loss (as a checkpoint may ship it):
    hfseg switches it off and computes the per-layer predictions itself, in training only."""
    overrides = {**TINY_MASK_CLASSIFICATION["maskformer"], "use_auxiliary_loss": True}
    with caplog.at_level("INFO"):
        model = build_model(ModelArguments(model_type="maskformer", config_overrides=json.dumps(overrides)), ID2LABEL)
    assert model.config.use_auxiliary_loss is False and "use_auxiliary_loss set to false" in caplog.text
    supervise_every_decoder_layer(model)
    supervise_every_decoder_layer(model)  # once is enough: the hooks are not added twice
    decoder = model.model.transformer_module.decoder
    outputs_of_layers = []
    for layer in decoder.layers:
        layer.register_forward_hook(lambda module, args, output: outputs_of_layers.append(output))
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values=torch.randn(2, 3, 64, 64), output_auxiliary_logits=True)
    assert not outputs.auxiliary_logits  # evaluation: the last layer alone
    # The last layer's output through the same path gives the model's own predictions.
    last = layer_predictions(model, outputs_of_layers[-1], outputs.pixel_decoder_last_hidden_state)
    torch.testing.assert_close(last["class_queries_logits"], outputs.class_queries_logits)
    torch.testing.assert_close(last["masks_queries_logits"], outputs.masks_queries_logits)

    parts = LossParts(model)
    model.train()
    outputs = model(**training_step_batch(), output_auxiliary_logits=True)
    assert len(outputs.auxiliary_logits) == len(decoder.layers) - 1 >= 1
    main, auxiliary = parts.pop()
    assert torch.isfinite(outputs.loss) and main > 0 and auxiliary > 0
    torch.testing.assert_close(main + auxiliary, outputs.loss.detach())
    outputs.loss.backward()
    assert model.class_predictor.weight.grad is not None
