"""Speed options train and evaluate like fp32: bf16 autocast, channels-last, gradient checkpointing, torch.compile,
bf16 evaluation; and evaluation keeps its confusion matrices on the device."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import tiny_model

from hfseg.config import SegTrainingArguments
from hfseg.data.collate import collate_segmentation
from hfseg.data.labels import LabelSpec
from hfseg.data.preprocess import attach_transform
from hfseg.data.synthetic import SYNTHETIC_ID2LABEL
from hfseg.data.transforms import EvalTransform
from hfseg.errors import HfsegError
from hfseg.evaluation.metrics import TrainerSegmentationMetrics
from hfseg.models.losses import SegmentationLoss
from hfseg.training.trainer import SegTrainer

#: bf16 keeps 8 bits of mantissa; observed on CPU: pixel accuracy 0.6741 vs fp32 0.6759, loss 1.61799 vs 1.61816.
BF16_ACCURACY_TOLERANCE = 0.03


def train_and_evaluate(tiny_synthetic, tmp_path, model_type="segformer", **options):
    """Three optimizer steps from the same random init and data order, then an evaluation."""
    torch.manual_seed(0)
    model = tiny_model(model_type, num_labels=len(SYNTHETIC_ID2LABEL))
    spec = LabelSpec(SYNTHETIC_ID2LABEL)
    transform = EvalTransform(64)
    args = SegTrainingArguments(
        output_dir=str(tmp_path / "_".join(options) or "fp32"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=3,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        data_seed=0,
        **options,
    )
    metrics = TrainerSegmentationMetrics(SYNTHETIC_ID2LABEL)
    trainer = SegTrainer(
        model=model,
        args=args,
        train_dataset=attach_transform(tiny_synthetic["train"], "image", "annotation", spec, transform),
        eval_dataset=attach_transform(tiny_synthetic["validation"], "image", "annotation", spec, transform),
        data_collator=functools.partial(collate_segmentation, ignore_index=255),
        compute_metrics=metrics,
        loss_fn=SegmentationLoss("ce"),
    )
    result = trainer.train()
    evaluation = trainer.evaluate()
    return result.training_loss, evaluation, metrics.last_confusion


@pytest.fixture(scope="module")
def fp32_run(tiny_synthetic, tmp_path_factory):
    return train_and_evaluate(tiny_synthetic, tmp_path_factory.mktemp("fp32"))


def test_bf16_autocast_trains_within_tolerance_of_fp32(tiny_synthetic, tmp_path, fp32_run):
    fp32_loss, fp32_metrics, _ = fp32_run
    loss, metrics, _ = train_and_evaluate(tiny_synthetic, tmp_path, bf16=True)
    assert torch.isfinite(torch.tensor(loss)) and loss == pytest.approx(fp32_loss, rel=0.01)
    accuracy, fp32_accuracy = metrics["eval_overall_accuracy"], fp32_metrics["eval_overall_accuracy"]
    assert abs(accuracy - fp32_accuracy) <= BF16_ACCURACY_TOLERANCE


def test_channels_last_convnext_upernet_matches_fp32(tiny_synthetic, tmp_path):
    loss, metrics, confusion = train_and_evaluate(tiny_synthetic, tmp_path / "a", "upernet")
    loss_cl, metrics_cl, confusion_cl = train_and_evaluate(
        tiny_synthetic, tmp_path / "b", "upernet", channels_last=True
    )
    assert loss_cl == pytest.approx(loss, rel=1e-4)
    # Same arithmetic in another memory order: at most a handful of near-tied pixels may flip.
    assert (confusion_cl - confusion).abs().sum() <= 0.001 * confusion.sum()


def test_gradient_checkpointing_segformer_matches_fp32(tiny_synthetic, tmp_path, fp32_run):
    fp32_loss, _, fp32_confusion = fp32_run
    loss, _, confusion = train_and_evaluate(tiny_synthetic, tmp_path, gradient_checkpointing=True)
    assert loss == pytest.approx(fp32_loss, rel=1e-5)
    assert torch.equal(confusion, fp32_confusion)


@pytest.mark.slow
def test_torch_compile_inductor_trains_like_eager(tiny_synthetic, tmp_path, fp32_run):
    fp32_loss, fp32_metrics, _ = fp32_run
    loss, metrics, _ = train_and_evaluate(tiny_synthetic, tmp_path, torch_compile=True)
    assert loss == pytest.approx(fp32_loss, rel=1e-3)
    assert metrics["eval_overall_accuracy"] == pytest.approx(fp32_metrics["eval_overall_accuracy"], abs=0.01)


def test_eval_fp32_is_exact_and_bf16_close(tiny_synthetic, tmp_path):
    """The on-device evaluation path scores exactly what a direct fp32 computation does (the trainer tests check
    that); bf16 evaluation of the same weights agrees on nearly every pixel."""
    torch.manual_seed(0)
    model = tiny_model("segformer", num_labels=len(SYNTHETIC_ID2LABEL)).eval()
    spec = LabelSpec(SYNTHETIC_ID2LABEL)
    eval_dataset = attach_transform(tiny_synthetic["validation"], "image", "annotation", spec, EvalTransform(64))
    confusions = {}
    for eval_bf16 in (False, True):
        metrics = TrainerSegmentationMetrics(SYNTHETIC_ID2LABEL)
        args = SegTrainingArguments(
            output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to="none", use_cpu=True, eval_bf16=eval_bf16
        )
        trainer = SegTrainer(
            model=model,
            args=args,
            eval_dataset=eval_dataset,
            data_collator=functools.partial(collate_segmentation, ignore_index=255),
            compute_metrics=metrics,
        )
        trainer.evaluate()
        confusions[eval_bf16] = metrics.last_confusion
    fp32, bf16 = confusions[False], confusions[True]
    assert fp32.sum() == bf16.sum()  # the same labelled pixels
    agreement = 1 - (bf16 - fp32).abs().sum() / (2 * fp32.sum())
    assert agreement >= 0.9


def test_gradient_checkpointing_on_a_model_without_it_is_a_user_error(tmp_path):
    args = SegTrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, eval_strategy="no", gradient_checkpointing=True
    )
    with pytest.raises(HfsegError, match="--gradient_checkpointing: UperNetForSemanticSegmentation does not support"):
        SegTrainer(model=tiny_model("upernet"), args=args)
