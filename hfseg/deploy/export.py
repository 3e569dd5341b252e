"""`hfseg export`: a finished run -> an ONNX model that has checked itself against PyTorch.

hfseg export RUN --format onnx [--dtype fp32|fp16] [--quantize dynamic-int8|static-int8] --output DIR
    [--data_dir D --layout L | --dataset_name ID] [--max_eval_samples N] [--max_miou_drop 1.0]

Writes DIR/model.onnx (dynamic batch, height and width), the model's config.json and preprocessor_config.json (what
`hfseg predict/evaluate --backend onnx --model DIR` load), DIR/export_report.json and DIR/README.md (the run's card
with an "ONNX export" section). The check runs the run's validation split (as saved in its hfseg_config.yaml; the
data flags replace it; the embedded demo data when the run names none) through both backends. fp32 below
--min_pixel_agreement is an error; fp16 and int8 lose at most --max_miou_drop mIoU points, or it is an error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hfseg.config import RESOLVED_CONFIG_NAME, DataArguments, SegArgumentParser
from hfseg.deploy.onnx_export import DTYPES, EXPORTER, QUANTIZATIONS, convert_fp16, export_onnx, quantize_int8
from hfseg.deploy.onnx_model import ONNX_NAME, OnnxSegmentationModel, inference_session, require_export_extra
from hfseg.deploy.report import REPORT_NAME, compare_backends, file_size_mb, machine
from hfseg.errors import HfsegError, require_writable_dir, strip_debug, user_errors_exit
from hfseg.hub.card import CARD_NAME, export_card_section

logger = logging.getLogger("hfseg")

FORMATS = ("onnx",)
DATA_FLAGS = ("dataset_name", "data_dir")  # either one replaces the run's own data


@dataclass
class ExportArguments:
    run: str | None = field(default=None, metadata={"help": "The run to export: hfseg finetune's output_dir."})
    format: str = field(default="onnx", metadata={"help": "Export format.", "choices": list(FORMATS)})
    dtype: str = field(default="fp32", metadata={"help": "Weights and compute precision.", "choices": list(DTYPES)})
    quantize: str | None = field(
        default=None,
        metadata={
            "help": "ONNX Runtime int8 quantisation of the fp32 export: dynamic-int8 (weights; activations at run "
            "time) or static-int8 (activations calibrated on --calibration_samples check images).",
            "choices": list(QUANTIZATIONS),
        },
    )
    output: str | None = field(default=None, metadata={"help": "Folder for model.onnx, the report and the card."})
    max_miou_drop: float = field(
        default=1.0, metadata={"help": "fp16/int8: largest mIoU loss (points, 0-100 scale) accepted."}
    )
    min_pixel_agreement: float = field(
        default=0.999, metadata={"help": "fp32: smallest share of pixels where ONNX and PyTorch must agree."}
    )
    calibration_samples: int = field(default=32, metadata={"help": "static-int8: check images used to calibrate."})
    batch_size: int = field(default=1, metadata={"help": "Images per forward pass in the check."})
    opset: int = field(default=18, metadata={"help": "ONNX opset of the export."})


def parse_export_args(argv: list[str]):
    if argv and not argv[0].startswith("-"):  # `hfseg export RUN ...`
        argv = ["--run", argv[0], *argv[1:]]
    parser = SegArgumentParser((ExportArguments, DataArguments))
    parser.prog = "hfseg export"
    export_args, data_args = parser.parse_command(argv)
    if not export_args.run or not export_args.output:
        raise HfsegError("pass the run to export and --output DIR, e.g. hfseg export outputs/demo --output out/onnx")
    if export_args.quantize and export_args.dtype != "fp32":
        raise HfsegError(f"--quantize {export_args.quantize} quantises the fp32 export; leave --dtype fp32")
    if export_args.batch_size < 1 or export_args.calibration_samples < 1:
        raise HfsegError("--batch_size and --calibration_samples must be at least 1")
    output = Path(export_args.output)
    if (output / "config.json").is_file() and not (output / ONNX_NAME).is_file():
        # A saved model (the run itself, or another): its config.json and README.md would be replaced.
        raise HfsegError(
            f"--output {output} holds a saved model, not an ONNX export: exporting there would replace its "
            f"config.json and README.md; pass another folder, e.g. --output {output / 'onnx'}"
        )
    if not any(getattr(data_args, flag) for flag in DATA_FLAGS):
        data_args = run_data_arguments(Path(export_args.run), data_args)
    return export_args, data_args


def run_data_arguments(run: Path, data_args: DataArguments) -> DataArguments:
    """The data fields of the run's resolved config (its validation split), else the embedded demo data."""
    path = run / RESOLVED_CONFIG_NAME
    saved = yaml.safe_load(path.read_text()) if path.is_file() else None
    names = {f.name for f in dataclasses.fields(DataArguments)}
    values = {key: value for key, value in (saved or {}).items() if key in names and value is not None}
    if not any(values.get(flag) for flag in DATA_FLAGS):
        values = {"dataset_name": "synthetic"}
    # The check never trains: a run's synthetic train set need not be drawn again (validation images do not
    # depend on its size); an explicit --max_eval_samples wins.
    values = {**values, "synthetic_train_size": 1}
    if data_args.max_eval_samples is not None:
        values["max_eval_samples"] = data_args.max_eval_samples
    return dataclasses.replace(data_args, **values)


def check_batches(model, processor, data_args: DataArguments, run: str, batch_size: int):
    """(collated batches of the check data at the model's input size, label spec, data description)."""
    import torch

    from hfseg.data.adapters import label_spec_for_model, open_source, with_saved_ignore_index
    from hfseg.data.collate import collate_segmentation
    from hfseg.data.labels import LabelSpec
    from hfseg.data.preprocess import attach_transform
    from hfseg.evaluation.evaluate_model import config_location, evaluation_split
    from hfseg.evaluation.inference import InferenceOptions, eval_transform_for

    where = config_location(run)
    saved = LabelSpec.from_config(model.config, where)
    data_args = with_saved_ignore_index(data_args, saved, where)
    source = open_source(data_args)
    spec = label_spec_for_model(source, data_args, model.config.id2label, saved, where)
    rows = evaluation_split(source, data_args, None, seed=0)
    dataset = attach_transform(
        rows, source.image_column, source.label_column, spec, eval_transform_for(processor, InferenceOptions())
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=functools.partial(collate_segmentation, ignore_index=spec.ignore_index),
    )
    description = data_args.dataset_name or f"{data_args.data_dir} ({data_args.layout})"
    return list(loader), spec, description


def load_run(run: str):
    """The run's PyTorch model and image processor; a folder that is not a finished run is an `HfsegError`."""
    from hfseg.models.build import load_for_inference

    if not Path(run).is_dir():
        raise HfsegError(f"run {run} does not exist; pass a finished run's output_dir (hfseg finetune --output_dir)")
    if not (Path(run) / "config.json").is_file():
        raise HfsegError(
            f"run {run} has no config.json; pass a finished run's output_dir (hfseg finetune --output_dir)"
        )
    return load_for_inference(run)


def export_run(export_args: ExportArguments, data_args: DataArguments) -> dict:
    """Export, check and report; returns the report (also written to OUTPUT/export_report.json)."""
    require_export_extra()
    model, processor = load_run(export_args.run)
    output = Path(export_args.output)
    require_writable_dir(output, "--output")
    batches, spec, description = check_batches(model, processor, data_args, export_args.run, export_args.batch_size)
    if not batches:
        raise HfsegError(f"the check data ({description}) has no images; pass --data_dir/--layout or --dataset_name")
    output.mkdir(parents=True, exist_ok=True)
    target = output / ONNX_NAME
    with tempfile.TemporaryDirectory(dir=output) as scratch:
        fp32 = export_onnx(model, Path(scratch) / "fp32.onnx", batches[0]["pixel_values"][:1], export_args.opset)
        fp32_size = file_size_mb(fp32)
        if export_args.quantize:
            images = [
                batch["pixel_values"][i : i + 1].numpy() for batch in batches for i in range(len(batch["labels"]))
            ]
            quantize_int8(fp32, target, export_args.quantize, images[: export_args.calibration_samples])
        elif export_args.dtype == "fp16":
            convert_fp16(fp32, target)
        else:
            fp32.replace(target)
    model.config.save_pretrained(output)
    processor.save_pretrained(output)

    import torch

    weights = Path(export_args.run) / "model.safetensors"
    onnx_model = OnnxSegmentationModel(inference_session(target, torch.get_num_threads()), model.config)
    report = {
        "run": str(export_args.run),
        "file": ONNX_NAME,
        "format": export_args.format,
        "dtype": export_args.dtype,
        "quantize": export_args.quantize,
        "exporter": EXPORTER,
        "opset": export_args.opset,
        "model_type": model.config.model_type,
        "data": description,
        **compare_backends(model, onnx_model, batches, model.config.num_labels, spec.ignore_index),
        "file_sizes_mb": {
            "pytorch": file_size_mb(weights) if weights.is_file() else None,
            "onnx_fp32": fp32_size,
            "onnx": file_size_mb(target),
        },
        "machine": machine(),
        "thresholds": {
            "min_pixel_agreement": export_args.min_pixel_agreement,
            "max_miou_drop_points": export_args.max_miou_drop,
        },
    }
    (output / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    run_card = Path(export_args.run) / CARD_NAME
    card = run_card.read_text() if run_card.is_file() else f"# {Path(export_args.run).name} (ONNX)\n"
    (output / CARD_NAME).write_text(card.rstrip("\n") + "\n" + export_card_section(report))
    check_report(report, output)
    return report


def check_report(report: dict, output: Path) -> None:
    """fp32 must agree with PyTorch on `min_pixel_agreement` of the pixels; fp16/int8 may lose at most
    `max_miou_drop_points` mIoU points."""
    thresholds, where = report["thresholds"], output / REPORT_NAME
    if report["dtype"] == "fp32" and not report["quantize"]:
        if report["pixel_agreement"] < thresholds["min_pixel_agreement"]:
            raise HfsegError(
                f"{where}: the fp32 ONNX model agrees with PyTorch on {100 * report['pixel_agreement']:.3f}% of the "
                f"pixels, below --min_pixel_agreement {100 * thresholds['min_pixel_agreement']:.3f}%; the export is "
                "wrong for this model (an operator the exporter translates differently): report it with the run's "
                "model type and leave the ONNX file unused"
            )
    elif report["mean_iou_drop_points"] > thresholds["max_miou_drop_points"]:
        variant = report["quantize"] or report["dtype"]
        raise HfsegError(
            f"{where}: {variant} loses {report['mean_iou_drop_points']:.2f} mIoU points against PyTorch, more than "
            f"--max_miou_drop {thresholds['max_miou_drop_points']}; use the fp32 export, try "
            "--quantize static-int8, or raise --max_miou_drop if that loss is acceptable"
        )


@user_errors_exit
def main(argv: list[str] | None = None) -> dict:
    export_args, data_args = parse_export_args(strip_debug(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    for name in ("onnx_ir", "onnxscript"):  # one INFO line per graph rewrite: hundreds per export
        logging.getLogger(name).setLevel(logging.WARNING)
    report = export_run(export_args, data_args)
    print(
        f"\n{export_args.output}/{ONNX_NAME} ({report['quantize'] or report['dtype']}): pixel agreement "
        f"{100 * report['pixel_agreement']:.3f}%, mIoU PyTorch {report['torch']['mean_iou']:.4f} / ONNX "
        f"{report['onnx']['mean_iou']:.4f} ({report['mean_iou_drop_points']:+.2f} points), images/s "
        f"{report['torch']['images_per_second']:.2f} / {report['onnx']['images_per_second']:.2f}, "
        f"{report['file_sizes_mb']['onnx']:.2f} MB"
    )
    return report


if __name__ == "__main__":
    main()
