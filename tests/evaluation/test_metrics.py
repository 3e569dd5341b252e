"""Hand-worked confusion matrices with exact IoUs; streaming equals one-shot; logits are upsampled."""

import math

import numpy as np
import pytest
import torch

from hfseg.evaluation.metrics import (
    StreamingSegmentationMetric,
    TrainerSegmentationMetrics,
    check_label_range,
    compute_segmentation_metrics,
    confusion_and_out_of_range,
    confusion_matrix,
)

# labels / predictions on a 2x4 image, 4 classes, 255 ignored.
LABELS = torch.tensor([[0, 0, 1, 1], [1, 255, 2, 2]])
PREDS = torch.tensor([[0, 1, 1, 1], [0, 3, 2, 0]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PREDS, LABELS, num_labels=4)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[1, 0] = 1
    expected[2, 2] = 1
    expected[2, 0] = 1
    assert torch.equal(cm, expected)


def test_metrics_by_hand():
    result = compute_segmentation_metrics(PREDS, LABELS, num_labels=4)
    # class 0: inter 1, label 2, pred 3 -> IoU 1/4, acc 1/2
    # class 1: inter 2, label 3, pred 3 -> IoU 2/4, acc 2/3
    # class 2: inter 1, label 2, pred 1 -> IoU 1/2, acc 1/2
    # class 3: absent from labels and (the ignored pixel does not count) predictions -> NaN
    iou = result["per_category_iou"]
    assert iou[:3] == pytest.approx([0.25, 0.5, 0.5])
    assert math.isnan(iou[3])
    assert result["per_category_accuracy"][:3] == pytest.approx([0.5, 2 / 3, 0.5])
    assert result["mean_iou"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert result["mean_accuracy"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert result["overall_accuracy"] == pytest.approx(4 / 7)


def test_class_never_predicted_scores_zero_not_nan():
    labels = torch.tensor([[0, 1], [1, 1]])
    preds = torch.tensor([[0, 0], [0, 0]])
    result = compute_segmentation_metrics(preds, labels, num_labels=2)
    assert result["per_category_iou"][1] == 0.0
    assert result["per_category_accuracy"][1] == 0.0
    assert result["per_category_iou"][0] == pytest.approx(0.25)
    assert result["mean_iou"] == pytest.approx(0.125)


def test_predicted_but_absent_class_has_zero_iou_and_nan_accuracy():
    labels = torch.tensor([[0, 0]])
    preds = torch.tensor([[0, 1]])
    result = compute_segmentation_metrics(preds, labels, num_labels=3)
    assert result["per_category_iou"][1] == 0.0
    assert math.isnan(result["per_category_accuracy"][1])
    assert math.isnan(result["per_category_iou"][2])
    assert result["mean_iou"] == pytest.approx(0.25)  # (0.5 + 0) / 2


def test_trainer_padding_value_is_not_counted():
    labels = torch.tensor([[1, -100], [1, -100]])
    preds = torch.tensor([[1, 0], [1, 0]])
    result = compute_segmentation_metrics(preds, labels, num_labels=2)
    assert result["overall_accuracy"] == 1.0
    assert math.isnan(result["per_category_iou"][0])


def test_out_of_range_label_is_an_error():
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), num_labels=2)


def test_streaming_equals_one_shot_over_batches():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (6, 9, 7), generator=generator)
    labels[labels == 4] = 255
    preds = torch.randint(0, 5, (6, 9, 7), generator=generator)
    whole = compute_segmentation_metrics(preds, labels, num_labels=5)
    metric = StreamingSegmentationMetric(num_labels=5)
    for start in range(0, 6, 4):
        metric.update(preds[start : start + 4], labels[start : start + 4])
    streamed = metric.compute()
    assert streamed["mean_iou"] == pytest.approx(whole["mean_iou"])
    np.testing.assert_allclose(streamed["per_category_iou"], whole["per_category_iou"])


def test_logits_are_upsampled_to_label_size():
    # 2 classes, logits at 2x2 favour class 1 on the right half; labels at 4x4.
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, :, 1] = 5.0
    logits[0, 0, :, 0] = 5.0
    labels = torch.tensor([[0, 0, 1, 1]] * 4)[None]
    metric = StreamingSegmentationMetric(num_labels=2)
    metric.update(logits, labels)
    assert metric.compute()["mean_iou"] == pytest.approx(1.0)


def test_trainer_metrics_sum_per_sample_confusions_and_name_classes():
    class EvalPrediction:
        def __init__(self, predictions):
            self.predictions = predictions

    metrics = TrainerSegmentationMetrics({0: "sky", 1: "road"})
    first = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 2)
    second = confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 1]), 2)
    assert metrics(EvalPrediction(torch.stack([first])), compute_result=False) is None
    result = metrics(EvalPrediction(torch.stack([second])), compute_result=True)
    assert result["iou_sky"] == pytest.approx(1 / 2)
    assert result["iou_road"] == pytest.approx(2 / 3)
    assert result["per_category_iou"] == pytest.approx([0.5, 2 / 3])
    # reset after compute: the next evaluation starts from zero
    third = confusion_matrix(torch.tensor([0]), torch.tensor([0]), 2)
    assert metrics(EvalPrediction(third[None]), compute_result=True)["iou_sky"] == 1.0


def test_every_key_by_hand():
    """Same 2x4 example; TP = [1, 2, 1, 0], label areas [2, 3, 2, 0], predicted areas [3, 3, 1, 0]."""
    from hfseg.evaluation.metrics import metrics_from_confusion

    cm = confusion_matrix(PREDS, LABELS, num_labels=4)
    result = metrics_from_confusion(cm)
    expected = {
        "per_category_iou": [1 / 4, 2 / 4, 1 / 2],
        "per_category_accuracy": [1 / 2, 2 / 3, 1 / 2],
        "per_category_recall": [1 / 2, 2 / 3, 1 / 2],
        "per_category_precision": [1 / 3, 2 / 3, 1 / 1],
        "per_category_dice": [2 / 5, 4 / 6, 2 / 3],
        "per_category_fscore": [2 / 5, 4 / 6, 2 / 3],  # F1 = 2PR / (P + R) = Dice
    }
    for key, values in expected.items():
        assert result[key][:3] == pytest.approx(values), key
        assert math.isnan(result[key][3]), f"{key}: class 3 is in neither labels nor predictions"
        mean_key = key.replace("per_category_", "mean_")
        assert result[mean_key] == pytest.approx(sum(values) / 3), mean_key
    assert result["overall_accuracy"] == pytest.approx(4 / 7)
    # F-beta with beta = 2: (1 + 4) TP / (4 * label area + predicted area)
    f2 = metrics_from_confusion(cm, beta=2.0)
    assert f2["per_category_fscore"][:3] == pytest.approx([5 / 11, 10 / 15, 5 / 9])
    assert f2["mean_fscore"] == pytest.approx((5 / 11 + 10 / 15 + 5 / 9) / 3)
    precision, recall = 1 / 3, 1 / 2  # class 0, the textbook formula
    assert f2["per_category_fscore"][0] == pytest.approx(5 * precision * recall / (4 * precision + recall))
    expected_keys = {"overall_accuracy"} | set(expected) | {k.replace("per_category_", "mean_") for k in expected}
    assert set(result) == expected_keys


def test_never_predicted_class_has_zero_fscore_and_nan_precision():
    from hfseg.evaluation.metrics import metrics_from_confusion

    result = metrics_from_confusion(confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2))
    assert result["per_category_fscore"][1] == 0.0 and result["per_category_dice"][1] == 0.0
    assert math.isnan(result["per_category_precision"][1])
    assert result["per_category_recall"][1] == 0.0
    assert result["mean_fscore"] == pytest.approx((2 / 3 + 0) / 2)  # class 0: P 1/2, R 1


def test_empty_confusion_gives_nan_everywhere():
    from hfseg.evaluation.metrics import metrics_from_confusion

    result = metrics_from_confusion(torch.zeros(3, 3, dtype=torch.int64))
    assert all(math.isnan(result[key]) for key in ("mean_iou", "mean_fscore", "overall_accuracy"))


def test_per_sample_mean_iou_by_hand():
    from hfseg.evaluation.metrics import per_sample_mean_iou

    perfect = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 4)
    example = confusion_matrix(PREDS, LABELS, 4)
    empty = torch.zeros(4, 4, dtype=torch.int64)
    values = per_sample_mean_iou(torch.stack([perfect, example, empty]))
    assert values[0] == 1.0
    assert values[1].item() == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert math.isnan(values[2])


def test_per_class_table_lists_every_class_in_percent():
    from hfseg.evaluation.metrics import format_per_class_table

    result = compute_segmentation_metrics(PREDS, LABELS, num_labels=4)
    table = format_per_class_table(result, {0: "sky", 1: "road", 2: "car", 3: "tree"})
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "Class"
    sky = next(line for line in lines if line.startswith("| sky"))
    assert [cell.strip() for cell in sky.split("|")[2:5]] == ["25.00", "50.00", "40.00"]  # IoU, Acc, Dice
    assert "nan" in next(line for line in lines if line.startswith("| tree"))
    summary = lines[-1].split("|")
    assert summary[1].strip() == "57.14"  # aAcc = 4/7
    assert summary[2].strip() == f"{100 * (0.25 + 0.5 + 0.5) / 3:.2f}"  # mIoU


def test_trainer_metrics_keep_per_sample_iou_and_last_confusion():
    class EvalPrediction:
        def __init__(self, predictions):
            self.predictions = predictions

    metrics = TrainerSegmentationMetrics({0: "a", 1: "b", 2: "c", 3: "d"}, keep_per_sample=True)
    perfect = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 4)
    example = confusion_matrix(PREDS, LABELS, 4)
    metrics(EvalPrediction(perfect[None]), compute_result=False)
    metrics(EvalPrediction(example[None]), compute_result=True)
    assert metrics.per_sample_iou == pytest.approx([1.0, (0.25 + 0.5 + 0.5) / 3])
    assert torch.equal(metrics.last_confusion, perfect + example)


def test_prediction_outside_the_classes_at_a_labelled_pixel_is_an_error_not_clamped():
    with pytest.raises(ValueError, match=r"predictions contain class ids \[5\] outside 0..1 at labelled pixels"):
        confusion_matrix(torch.tensor([0, 5, 1]), torch.tensor([0, 1, 1]), num_labels=2)
    # At an ignored pixel the prediction is not scored, whatever it is.
    cm = confusion_matrix(torch.tensor([0, 5, 1]), torch.tensor([0, 255, 1]), num_labels=2)
    assert cm.tolist() == [[1, 0], [0, 1]]


def test_integer_class_map_with_an_extra_dimension_is_an_error_not_one_channel_logits():
    labels = torch.tensor([[0, 1, 1], [1, 1, 0]])
    metric = StreamingSegmentationMetric(num_labels=2)
    with pytest.raises(ValueError, match=r"integer predictions \(1, 2, 3\) and labels \(2, 3\) differ in shape"):
        metric.update(labels[None], labels)
    metric.update(labels, labels)  # the same map with the labels' shape scores 1
    logits = torch.nn.functional.one_hot(labels, 2).permute(2, 0, 1).float()  # (C, H, W) logits still work
    metric.update(logits, labels)
    assert metric.compute()["mean_iou"] == 1.0


def test_fscore_is_zero_wherever_tp_is_zero_unlike_mmseg_nan():
    from hfseg.evaluation.metrics import metrics_from_confusion

    cm = np.zeros((5, 5), dtype=np.int64)
    cm[0, 1] = 1  # class 0 only in the labels, class 1 only in the predictions
    cm[2, 4] = cm[4, 2] = 1  # class 2 in both, never overlapping
    cm[4, 4] = 2  # class 4: TP 2, 3 labelled, 3 predicted; class 3 absent from both
    result = metrics_from_confusion(cm)
    fscore = result["per_category_fscore"]
    assert fscore[[0, 1, 2]].tolist() == [0.0, 0.0, 0.0] and math.isnan(fscore[3])
    assert fscore[4] == pytest.approx(2 / 3)
    assert result["mean_fscore"] == pytest.approx((2 / 3) / 4)
    assert result["per_category_dice"][[0, 1, 2]].tolist() == [0.0, 0.0, 0.0]
    # mmseg's IoUMetric: F from precision and recall, NaN (0/0) in those three cases, then nanmean.
    tp, label_area, pred_area = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = tp / pred_area, tp / label_area
        mmseg_fscore = 2 * precision * recall / (precision + recall)
    assert np.isnan(mmseg_fscore[:4]).all() and np.nanmean(mmseg_fscore) == pytest.approx(2 / 3)


def test_per_sample_confusion_reads_nothing_on_the_host(host_reads):
    preds = torch.tensor([[0, 1, 2], [2, 2, 0]]).as_subclass(host_reads)
    labels = torch.tensor([[0, 1, 255], [2, 7, -100]]).as_subclass(host_reads)
    confusion, out_of_range = confusion_and_out_of_range(preds, labels, 3)
    assert host_reads.reads == []
    assert torch.equal(confusion, torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    assert int(out_of_range) == 1  # the 7
    with pytest.raises(ValueError, match=r"values \[7\] outside 0..2"):
        check_label_range(labels, 3)
