"""Streaming semantic-segmentation metrics: a confusion matrix accumulated batch by batch.

Keys and NaN semantics follow `evaluate`'s `mean_iou` (and mmsegmentation's IoUMetric for the
extra keys): a class absent from both prediction and labels has NaN IoU and is left out of the means.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Trainer pads labels with -100 across processes; never count those pixels.
TRAINER_PAD_INDEX = -100


def confusion_matrix(
    preds: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int = 255
) -> torch.Tensor:
    """Confusion matrix of one batch: rows are true classes, columns predicted classes.

    Args:
        preds: integer class map, any shape.
        labels: integer class map, same shape; `ignore_index` and -100 pixels are dropped.

    Returns:
        (num_labels, num_labels) int64 tensor on `labels.device`.

    Raises:
        ValueError: a label that is neither a class id nor an ignore value (a label-handling bug upstream), or
            a prediction outside 0..num_labels-1 at a labelled pixel (`evaluate` and mmseg would drop such a
            pixel's prediction from the predicted areas; clamping it into a class would count a wrong pixel).
    """
    confusion, out_of_range = confusion_and_out_of_range(preds, labels, num_labels, ignore_index)
    if out_of_range:
        check_label_range(labels, num_labels, ignore_index, preds)
    return confusion


def confusion_and_out_of_range(
    preds: torch.Tensor, labels: torch.Tensor, num_labels: int, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """`confusion_matrix` without its check, and without any host sync (no boolean indexing, no `bincount`,
    whose CUDA kernel reads its maximum on the host): what evaluation runs once per sample.

    Returns:
        (num_labels, num_labels) int64 confusion and the () int64 count of labelled pixels whose label or
        prediction is outside 0..num_labels-1 (not counted in the matrix; pass both to `check_label_range` when
        non-zero, which names the values).
    """
    if preds.shape != labels.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} differ in shape")
    labels = labels.reshape(-1).long()
    preds = preds.reshape(-1).long().to(labels.device)
    labelled = (labels != ignore_index) & (labels != TRAINER_PAD_INDEX)
    in_range = (labels >= 0) & (labels < num_labels) & (preds >= 0) & (preds < num_labels)
    cells = num_labels * num_labels
    index = torch.where(labelled & in_range, labels * num_labels + preds, cells)  # the last bin is dropped
    counts = torch.zeros(cells + 1, dtype=torch.int64, device=labels.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    return counts[:cells].reshape(num_labels, num_labels), (labelled & ~in_range).sum()


def check_label_range(
    labels: torch.Tensor, num_labels: int, ignore_index: int = 255, preds: torch.Tensor | None = None
) -> None:
    """Raise ValueError naming the label values that are neither class ids nor ignore values, then (with `preds`)
    the predicted values outside 0..num_labels-1 at labelled pixels."""
    labels = labels.reshape(-1).long()
    labelled = (labels != ignore_index) & (labels != TRAINER_PAD_INDEX)
    bad = labels[labelled & ((labels < 0) | (labels >= num_labels))].unique()[:5].tolist()
    if bad:
        raise ValueError(
            f"labels contain values {bad} outside 0..{num_labels - 1} that are not ignore_index={ignore_index}; "
            "check reduce_labels / label_map for this data set"
        )
    if preds is None:
        return
    preds = preds.reshape(-1).long().to(labels.device)[labelled]
    bad = preds[(preds < 0) | (preds >= num_labels)].unique()[:5].tolist()
    if bad:
        raise ValueError(
            f"predictions contain class ids {bad} outside 0..{num_labels - 1} at labelled pixels; "
            f"the model predicts more classes than num_labels={num_labels}, or the predictions are not class ids"
        )


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of logits to a label's size: (B, C, h, w) -> (B, C, H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)


def metrics_from_confusion(confusion: np.ndarray | torch.Tensor, beta: float = 1.0) -> dict[str, float | np.ndarray]:
    """`evaluate`-style metrics plus mmsegmentation's mDice / mFscore / precision / recall from a (C, C)
    confusion matrix (rows: true class, columns: predicted class).

    Per class, with TP the diagonal, FN = row sum - TP and FP = column sum - TP:
    IoU = TP / (TP + FN + FP); accuracy = recall = TP / (TP + FN); precision = TP / (TP + FP);
    Dice = 2 TP / (2 TP + FN + FP); F-beta = (1 + b^2) TP / ((1 + b^2) TP + b^2 FN + FP) (= Dice for b = 1).
    A ratio whose denominator is 0 is NaN and left out of the means (`mean_*` use `nanmean`): a class absent
    from both labels and predictions never counts; a class in the labels but never predicted scores 0 IoU.
    `overall_accuracy` (mmseg's aAcc) is correct pixels / labelled pixels.

    Dice and F-score are 0 wherever TP = 0 and the class is in the labels or the predictions (only in the
    labels, only in the predictions, or in both without overlap), and count as 0 in `mean_dice`/`mean_fscore`;
    NaN only for a class absent from both. mmseg computes F from precision and recall and gets NaN (0/0) in
    those three cases, which its nanmean then leaves out, so its mFscore can be higher than ours.
    Precision is NaN for a class never predicted, recall (= accuracy) NaN for a class not in the labels.
    """
    cm = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion, dtype=np.float64)
    intersect = np.diag(cm)
    area_label = cm.sum(axis=1)
    area_pred = cm.sum(axis=0)
    union = area_label + area_pred - intersect
    beta2 = float(beta) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersect / union, np.nan)
        accuracy = np.where(area_label > 0, intersect / area_label, np.nan)
        precision = np.where(area_pred > 0, intersect / area_pred, np.nan)
        dice = np.where(area_label + area_pred > 0, 2 * intersect / (area_label + area_pred), np.nan)
        fscore_denominator = beta2 * area_label + area_pred
        fscore = np.where(fscore_denominator > 0, (1 + beta2) * intersect / fscore_denominator, np.nan)
        total = area_label.sum()
        overall = intersect.sum() / total if total > 0 else np.nan
    return {
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(accuracy),
        "overall_accuracy": float(overall),
        "mean_dice": _nanmean(dice),
        "mean_precision": _nanmean(precision),
        "mean_recall": _nanmean(accuracy),
        "mean_fscore": _nanmean(fscore),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
        "per_category_dice": dice,
        "per_category_precision": precision,
        "per_category_recall": accuracy.copy(),
        "per_category_fscore": fscore,
    }


def per_sample_mean_iou(confusions: torch.Tensor) -> torch.Tensor:
    """(B, C, C) per-sample confusion matrices -> (B,) mean IoU of each sample over the classes it has
    (in its labels or predictions); NaN for a sample without labelled pixels."""
    confusions = torch.as_tensor(confusions).double()
    intersect = torch.diagonal(confusions, dim1=-2, dim2=-1)
    union = confusions.sum(-1) + confusions.sum(-2) - intersect
    iou = torch.where(union > 0, intersect / union.clamp(min=1), torch.nan)
    return torch.nanmean(iou, dim=-1)


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


class StreamingSegmentationMetric:
    """Accumulates a confusion matrix over batches; memory is O(num_labels^2), whatever the data size.

    Example:
        >>> metric = StreamingSegmentationMetric(num_labels=3)
        >>> metric.update(logits, labels)   # logits (B, C, h, w) or class map (B, H, W)
        >>> metric.compute()["mean_iou"]
    """

    def __init__(self, num_labels: int, ignore_index: int = 255):
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64)

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred_or_logits, labels) -> None:
        """Add one batch.

        Args:
            pred_or_logits: floating-point logits (B, C, h, w) for (B, H, W) labels, or (C, h, w) for (H, W),
                upsampled bilinearly to the labels' size and argmax'ed; or an integer class map with the labels'
                exact shape.
            labels: (B, H, W) or (H, W) class ids; `ignore_index` and -100 are not counted.

        Raises:
            ValueError: an integer class map whose shape differs from the labels' (e.g. (1, H, W) for (H, W)
                labels, which would otherwise be read as 1-channel logits), or see `confusion_matrix`.
        """
        pred_or_logits = torch.as_tensor(pred_or_logits)
        labels = torch.as_tensor(labels)
        if not pred_or_logits.is_floating_point() and pred_or_logits.shape != labels.shape:
            raise ValueError(
                f"integer predictions {tuple(pred_or_logits.shape)} and labels {tuple(labels.shape)} differ in "
                "shape; a class map must have the labels' shape (squeeze or add the batch dimension), logits must "
                "be floating point"
            )
        if pred_or_logits.is_floating_point() and pred_or_logits.ndim == labels.ndim + 1 and labels.ndim >= 2:
            logits = pred_or_logits if labels.ndim == 3 else pred_or_logits[None]
            preds = upsample_logits(logits, tuple(labels.shape[-2:])).argmax(dim=1)
            preds = preds if labels.ndim == 3 else preds[0]
        else:
            preds = pred_or_logits
        self.update_confusion(confusion_matrix(preds, labels, self.num_labels, self.ignore_index))

    def update_confusion(self, confusion: torch.Tensor) -> None:
        """Add a precomputed (C, C) or per-sample (B, C, C) confusion matrix."""
        confusion = torch.as_tensor(confusion).to(torch.int64)
        if self.confusion.device != confusion.device:  # accumulate where the batches are: no copy per batch
            self.confusion = self.confusion.to(confusion.device)
        self.confusion += confusion.reshape(-1, self.num_labels, self.num_labels).sum(0)

    def compute(self) -> dict[str, float | np.ndarray]:
        return metrics_from_confusion(self.confusion)


def compute_segmentation_metrics(preds, labels, num_labels: int, ignore_index: int = 255) -> dict:
    """One-shot version of `StreamingSegmentationMetric` for predictions already in memory."""
    metric = StreamingSegmentationMetric(num_labels, ignore_index)
    if isinstance(preds, (list, tuple)):
        for pred, label in zip(preds, labels, strict=True):
            metric.update(pred, label)
    else:
        metric.update(preds, labels)
    return metric.compute()


class TrainerSegmentationMetrics:
    """`compute_metrics` for `Trainer(batch_eval_metrics=True)`.

    `SegTrainer.prediction_step` hands it per-sample confusion matrices (B, C, C) as predictions, so
    what crosses processes is small and `gather_for_metrics` drops the sampler's duplicated samples.

    Args:
        keep_per_sample: also record each sample's mean IoU, in evaluation order (`per_sample_iou`), for
            galleries of the worst images.

    After each `compute_result=True` call, `last_confusion` holds the (C, C) matrix the result came from.
    """

    def __init__(
        self, id2label: dict[int, str], ignore_index: int = 255, keep_per_sample: bool = False, foreground=False
    ):
        self.id2label = {int(k): v for k, v in id2label.items()}
        self.foreground = foreground
        self.metric = StreamingSegmentationMetric(len(self.id2label), ignore_index)
        self.keep_per_sample = keep_per_sample
        self.per_sample_iou: list[float] = []
        self.last_confusion: torch.Tensor | None = None

    def __call__(self, eval_pred, compute_result: bool = True) -> dict | None:
        confusions = torch.as_tensor(eval_pred.predictions)
        self.metric.update_confusion(confusions)
        if self.keep_per_sample:
            self.per_sample_iou += per_sample_mean_iou(confusions.cpu()).tolist()
        if not compute_result:
            return None
        result = self.metric.compute()
        self.last_confusion = self.metric.confusion.clone().cpu()
        self.metric.reset()
        flat = flatten_metrics(result, self.id2label)
        return {**flat, **foreground_metrics(result)} if self.foreground else flat


def flatten_metrics(result: dict, id2label: dict[int, str]) -> dict:
    """Scalars stay, arrays become lists (JSON-able) and per-class IoU is added under class names."""
    flat = {}
    for key, value in result.items():
        flat[key] = value.tolist() if isinstance(value, np.ndarray) else value
    for index, iou in enumerate(result["per_category_iou"]):
        flat[f"iou_{id2label.get(index, str(index))}"] = float(iou)
    return flat


def foreground_metrics(result: dict) -> dict[str, float]:
    """Binary masks: IoU, Dice, precision and recall of class 1 (the foreground) as flat keys."""
    return {
        f"foreground_{name}": float(result[f"per_category_{name}"][1])
        for name in ("iou", "dice", "precision", "recall")
    }


#: (column title, per-class key, summary title, summary key) of the printed tables, mmseg's names.
TABLE_COLUMNS = (
    ("IoU", "per_category_iou", "mIoU", "mean_iou"),
    ("Acc", "per_category_accuracy", "mAcc", "mean_accuracy"),
    ("Dice", "per_category_dice", "mDice", "mean_dice"),
    ("Fscore", "per_category_fscore", "mFscore", "mean_fscore"),
    ("Precision", "per_category_precision", "mPrecision", "mean_precision"),
    ("Recall", "per_category_recall", "mRecall", "mean_recall"),
)


def format_per_class_table(result: dict, id2label: dict[int, str]) -> str:
    """A per-class table and a summary line (aAcc, mIoU, ...) in percent, as mmsegmentation prints them.

    Args:
        result: `metrics_from_confusion` output (arrays or lists); `eval_`-prefixed keys are accepted too.
    """

    def get(key):
        return result[key] if key in result else result[f"eval_{key}"]

    def cell(value) -> str:
        value = float(value)
        return "nan" if np.isnan(value) else f"{100 * value:.2f}"

    names = [str(id2label.get(index, index)) for index in range(len(get("per_category_iou")))]
    header = ["Class", *(title for title, _, _, _ in TABLE_COLUMNS)]
    rows = [[name, *(cell(get(key)[index]) for _, key, _, _ in TABLE_COLUMNS)] for index, name in enumerate(names)]
    summary_header = ["aAcc", *(title for _, _, title, _ in TABLE_COLUMNS)]
    summary = [cell(get("overall_accuracy")), *(cell(get(key)) for _, _, _, key in TABLE_COLUMNS)]
    return _table(header, rows) + "\n\n" + _table(summary_header, [summary])


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row):
        return "| " + " | ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
