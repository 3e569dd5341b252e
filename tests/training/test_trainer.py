"""SegTrainer's streamed evaluation equals a direct per-image computation at each label's own size."""

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
from hfseg.evaluation.metrics import StreamingSegmentationMetric, TrainerSegmentationMetrics, upsample_logits
from hfseg.training.trainer import SegTrainer


def evaluate_synthetic(model, tiny_synthetic, tmp_path, batch_size: int):
    """SegTrainer.evaluate of `model` on the synthetic validation split at 64 px: (dataset, metrics, results)."""
    spec = LabelSpec(SYNTHETIC_ID2LABEL)
    eval_dataset = attach_transform(tiny_synthetic["validation"], "image", "annotation", spec, EvalTransform(64))
    args = SegTrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=batch_size, report_to="none", use_cpu=True,
        eval_strategy="no",
    )  # fmt: skip
    trainer_metrics = TrainerSegmentationMetrics(SYNTHETIC_ID2LABEL)
    trainer = SegTrainer(
        model=model,
        args=args,
        eval_dataset=eval_dataset,
        data_collator=functools.partial(collate_segmentation, ignore_index=255),
        compute_metrics=trainer_metrics,
    )
    return eval_dataset, trainer_metrics, trainer.evaluate()


@pytest.mark.parametrize("model_type", ["segformer", "upernet"])
def test_streamed_eval_matches_direct_computation(tiny_synthetic, tmp_path, model_type):
    torch.manual_seed(0)
    model = tiny_model(model_type, num_labels=len(SYNTHETIC_ID2LABEL)).eval()
    eval_dataset, trainer_metrics, metrics = evaluate_synthetic(model, tiny_synthetic, tmp_path, batch_size=4)

    expected = StreamingSegmentationMetric(len(SYNTHETIC_ID2LABEL))
    sizes = set()
    with torch.no_grad():
        for example in eval_dataset:
            logits = model(pixel_values=example["pixel_values"][None]).logits
            labels = example["labels"]
            sizes.add(tuple(labels.shape))
            expected.update(upsample_logits(logits, tuple(labels.shape)).argmax(1), labels[None])
    assert len(sizes) > 1, "the test needs images of different sizes in one batch"
    assert torch.equal(trainer_metrics.last_confusion, expected.confusion)  # exact: the same pixels, the same counts
    direct = expected.compute()
    assert metrics["eval_mean_iou"] == pytest.approx(direct["mean_iou"], nan_ok=True)
    assert metrics["eval_overall_accuracy"] == pytest.approx(direct["overall_accuracy"])
    assert metrics["eval_per_category_iou"] == pytest.approx(list(direct["per_category_iou"]), nan_ok=True)
    assert "eval_iou_disc" in metrics


def test_collate_pads_labels_with_ignore_index_and_keeps_sizes():
    examples = [
        {"pixel_values": torch.zeros(3, 8, 8), "labels": torch.ones(5, 7, dtype=torch.long)},
        {"pixel_values": torch.zeros(3, 8, 8), "labels": torch.full((6, 4), 2, dtype=torch.long)},
    ]
    batch = collate_segmentation(examples, ignore_index=255)
    assert batch["pixel_values"].shape == (2, 3, 8, 8)
    assert batch["labels"].shape == (2, 6, 7)
    assert batch["label_sizes"].tolist() == [[5, 7], [6, 4]]
    assert (batch["labels"][0, 5:] == 255).all() and (batch["labels"][0, :5] == 1).all()
    assert (batch["labels"][1, :, 4:] == 255).all() and (batch["labels"][1, :, :4] == 2).all()


def test_training_loss_ignores_label_sizes_key(tiny_synthetic, tmp_path):
    from hfseg.data.transforms import TrainTransform

    model = tiny_model("segformer", num_labels=5)
    spec = LabelSpec(SYNTHETIC_ID2LABEL)
    train = attach_transform(tiny_synthetic["train"], "image", "annotation", spec, TrainTransform(32))
    args = SegTrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to="none", use_cpu=True,
        eval_strategy="no", save_strategy="no",
    )  # fmt: skip
    trainer = SegTrainer(
        model=model, args=args, train_dataset=train, data_collator=functools.partial(collate_segmentation)
    )
    result = trainer.train()
    assert result.global_step == 2
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_eval_reports_an_out_of_range_label_by_value(tmp_path):
    model = tiny_model("segformer", num_labels=5).eval()
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[3, 4] = 9
    samples = [{"pixel_values": torch.zeros(3, 64, 64), "labels": labels}] * 2
    args = SegTrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none", use_cpu=True)
    trainer = SegTrainer(
        model=model,
        args=args,
        eval_dataset=samples,
        data_collator=functools.partial(collate_segmentation, ignore_index=255),
        compute_metrics=TrainerSegmentationMetrics({i: str(i) for i in range(5)}),
    )
    with pytest.raises(ValueError, match=r"labels contain values \[9\] outside 0..4"):
        trainer.evaluate()


def test_mask2former_eval_scores_class_scores_and_their_normalised_nll(tiny_synthetic, tmp_path):
    from conftest import tiny_mask_classification_model

    from hfseg.evaluation.inference import mask_class_scores

    model = tiny_mask_classification_model("mask2former", num_labels=len(SYNTHETIC_ID2LABEL)).eval()
    eval_dataset, trainer_metrics, metrics = evaluate_synthetic(model, tiny_synthetic, tmp_path, batch_size=3)

    expected = StreamingSegmentationMetric(len(SYNTHETIC_ID2LABEL))
    nll_sums, pixels = [0.0, 0.0], [0, 0]  # two batches of 3; Trainer's eval_loss is the mean of their losses
    with torch.no_grad():
        for index, example in enumerate(eval_dataset):
            pixel_values, labels = example["pixel_values"][None], example["labels"]
            outputs = model(pixel_values=pixel_values)
            scores = mask_class_scores(outputs.class_queries_logits, outputs.masks_queries_logits, (64, 64))
            scores = upsample_logits(scores, tuple(labels.shape))[0]
            expected.update(scores.argmax(0), labels)
            share = scores / scores.sum(0, keepdim=True)  # each class's share of the pixel's score
            labelled = labels != 255
            nll_sums[index // 3] -= share.gather(0, labels.clamp(max=4)[None])[0][labelled].log().sum().item()
            pixels[index // 3] += int(labelled.sum())
    assert torch.equal(trainer_metrics.last_confusion, expected.confusion)
    assert len(expected.confusion.diagonal().nonzero()) > 1, "more than one class predicted"
    assert len(eval_dataset) == 6
    expected_loss = (nll_sums[0] / pixels[0] + nll_sums[1] / pixels[1]) / 2
    assert metrics["eval_loss"] == pytest.approx(expected_loss, rel=1e-5)
