"""ONNX Runtime fp32 / int8 vs PyTorch on the CPU: images/s and mIoU difference, in one run.

Each model is exported once (`hfseg.deploy.onnx_export.export_onnx`, torch.onnx dynamo), quantised with ONNX
Runtime (dynamic-int8, and static-int8 calibrated on up to 16 of the check images), and every variant runs the same
preprocessed images as PyTorch through `hfseg.deploy.report.compare_backends` (`whole` inference, batch 1, one untimed
warm-up image each, scored at the labels' size; ORT gets torch's thread count). Models:
- `segformer-b0-512`: random-init SegFormer-B0 (5-class head) at 512x512 on 8 synthetic scenes: the speed target
  (ORT fp32 >= 1.3x PyTorch, int8 >= 2x); its mIoU is meaningless (random weights), its agreement is not.
- `demo`: the demo run (`make demo`'s outputs/demo, or --demo_run DIR) on its 40 validation images: the mIoU target
  (int8 loses <= 1 point).

    python benchmarks/export.py [--demo_run outputs/demo]
    python benchmarks/export.py --quick   # CI-sized: a tiny SegFormer at 64
"""

from __future__ import annotations

from pathlib import Path

from common import (
    ROOT,
    TINY_SEGFORMER,
    base_parser,
    child_main,
    format_table,
    machine_info,
    machine_line,
    ratio,
    run_configurations,
    write_results,
)

NAME = "export"
VARIANTS = ("fp32", "dynamic-int8", "static-int8")
CALIBRATION_IMAGES = 16


def save_random_segformer(directory: Path, config: dict) -> None:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    from hfseg.data.synthetic import SYNTHETIC_ID2LABEL

    torch.manual_seed(0)
    id2label = dict(SYNTHETIC_ID2LABEL)  # the check data's classes
    overrides = TINY_SEGFORMER if config["model"] == "tiny" else {}
    SegformerForSemanticSegmentation(SegformerConfig(id2label=id2label, **overrides)).save_pretrained(directory)
    size = config["input_size"]
    SegformerImageProcessor(size={"height": size, "width": size}, do_reduce_labels=False).save_pretrained(directory)


def run_configuration(config: dict) -> dict:
    import tempfile

    import torch

    from hfseg.config import DataArguments
    from hfseg.deploy.export import check_batches, load_run
    from hfseg.deploy.onnx_export import export_onnx, quantize_int8
    from hfseg.deploy.onnx_model import OnnxSegmentationModel, inference_session
    from hfseg.deploy.report import compare_backends, file_size_mb

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        run = config.get("run")
        if run is None:
            run = scratch / "run"
            save_random_segformer(run, config)
        model, processor = load_run(str(run))
        data_args = DataArguments(dataset_name="synthetic", synthetic_train_size=1)
        if config.get("images"):
            data_args.synthetic_eval_size = config["images"]
        batches, spec, _ = check_batches(model, processor, data_args, str(run), batch_size=1)
        fp32 = export_onnx(model, scratch / "fp32.onnx", batches[0]["pixel_values"])
        calibration = [batch["pixel_values"].numpy() for batch in batches[:CALIBRATION_IMAGES]]
        files = {"fp32": fp32}
        for method in VARIANTS[1:]:
            files[method] = quantize_int8(fp32, scratch / f"{method}.onnx", method, calibration)
        variants = []
        for variant, path in files.items():
            onnx_model = OnnxSegmentationModel(inference_session(path, torch.get_num_threads()), model.config)
            report = compare_backends(model, onnx_model, batches, model.config.num_labels, spec.ignore_index)
            variants.append({"variant": variant, "size_mb": file_size_mb(path), **report})
    return {"model": config["name"], "input_size": config["input_size"], "variants": variants}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--demo_run", type=Path, default=ROOT / "outputs" / "demo", help="The demo run to export.")
    args = parser.parse_args()
    if args.child:
        child_main(run_configuration, args.child)
        return
    info = machine_info()
    print(machine_line(info))
    if args.quick:
        configs = [{"name": "tiny-segformer-64", "model": "tiny", "input_size": 64, "images": 4}]
    else:
        configs = [{"name": "segformer-b0-512", "model": "b0", "input_size": 512, "images": 8}]
        if (args.demo_run / "config.json").is_file():
            configs.append({"name": "demo", "run": str(args.demo_run), "input_size": 128})
        else:
            print(f"no demo run at {args.demo_run} (make demo, or --demo_run DIR): its mIoU row is left out")
    results = run_configurations("export.py", configs, isolated=not args.quick)
    rows = []
    for result in results:
        for variant in result.get("variants", []):
            torch_side, onnx_side = variant["torch"], variant["onnx"]
            rows.append([
                result["model"], variant["variant"], torch_side["images_per_second"], onnx_side["images_per_second"],
                ratio(onnx_side["images_per_second"], torch_side["images_per_second"]), variant["pixel_agreement"],
                torch_side["mean_iou"], onnx_side["mean_iou"], variant["mean_iou_drop_points"], variant["size_mb"],
            ])  # fmt: skip
    headers = ["model", "onnx", "torch img/s", "ours img/s", "ours / torch", "agreement", "torch mIoU", "ours mIoU",
               "mIoU drop (pts)", "MB"]  # fmt: skip
    print(format_table(headers, rows))
    table = {"headers": headers, "rows": rows}
    path = write_results(NAME, args, {"machine": info, "results": results, "table": table})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
