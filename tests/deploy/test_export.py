"""`hfseg export` to ONNX on tiny random SegFormer and UperNet runs: agreement with PyTorch, dynamic sizes, the
int8 report, `--backend onnx` in predict/evaluate, and the user errors."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_UPERNET, save_tiny_model
from PIL import Image

from hfseg.data.synthetic import SYNTHETIC_ID2LABEL, make_synthetic_dataset
from hfseg.deploy.export import check_report
from hfseg.deploy.export import main as export_main
from hfseg.deploy.onnx_model import inference_session, require_export_extra
from hfseg.errors import HfsegError
from hfseg.hub.card import export_card_section

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CHECK_FLAGS = ["--synthetic_eval_size", "4"]


def export(run, output, *extra):
    report = export_main([str(run), "--format", "onnx", "--output", str(output), *CHECK_FLAGS, *extra])
    assert json.loads((output / "export_report.json").read_text()) == json.loads(json.dumps(report))
    return report


@pytest.fixture(scope="module")
def segformer_run(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("segformer_run"), SYNTHETIC_ID2LABEL)


@pytest.fixture(scope="module")
def segformer_export(segformer_run, tmp_path_factory):
    output = tmp_path_factory.mktemp("segformer_onnx")
    return output, export(segformer_run, output)


@pytest.mark.slow
def test_fp32_export_matches_pytorch_and_writes_report_and_card(segformer_run, segformer_export):
    output, report = segformer_export
    assert report["pixel_agreement"] >= 0.999
    assert abs(report["mean_iou_drop_points"]) < 0.1
    assert report["num_images"] == 4 and report["dtype"] == "fp32" and report["quantize"] is None
    assert report["torch"]["images_per_second"] > 0 and report["onnx"]["images_per_second"] > 0
    assert report["file_sizes_mb"]["onnx"] > 0 and report["file_sizes_mb"]["pytorch"] > 0
    assert {p.name for p in output.iterdir()} >= {
        "model.onnx", "config.json", "preprocessor_config.json", "export_report.json", "README.md",
    }  # fmt: skip
    card = (output / "README.md").read_text()
    assert "## ONNX export" in card and f"Pixel agreement {100 * report['pixel_agreement']:.3f}%" in card


@pytest.mark.slow
def test_exported_graph_takes_other_batch_and_spatial_sizes(segformer_run, segformer_export):
    from hfseg.models.build import load_for_inference

    output, _ = segformer_export
    model, _ = load_for_inference(str(segformer_run))
    session = inference_session(output / "model.onnx")
    for shape in [(1, 3, 64, 64), (2, 3, 96, 80)]:
        pixel_values = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = model(pixel_values=pixel_values).logits.numpy()
        (logits,) = session.run(["logits"], {"pixel_values": pixel_values.numpy()})
        assert logits.shape == expected.shape == (shape[0], len(SYNTHETIC_ID2LABEL), shape[2] // 4, shape[3] // 4)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_fp32_below_the_agreement_threshold_is_an_error(segformer_export):
    output, report = segformer_export
    check_report(report, output)  # as exported: passes
    strict = {**report, "thresholds": {**report["thresholds"], "min_pixel_agreement": 1.01}}
    with pytest.raises(HfsegError, match=r"agrees with PyTorch on .* below --min_pixel_agreement 101\.000%"):
        check_report(strict, output)


@pytest.mark.slow
def test_predict_with_onnx_backend_writes_the_pytorch_masks(segformer_run, segformer_export, tmp_path):
    from hfseg.evaluation.predict import main as predict_main

    output, _ = segformer_export
    images = tmp_path / "images"
    images.mkdir()
    for index, row in enumerate(make_synthetic_dataset(train_size=1, eval_size=3, seed=5)["validation"]):
        row["image"].save(images / f"{index}.png")
    for mode in (["--eval_mode", "whole"], ["--eval_mode", "slide", "--eval_crop_size", "48"]):
        written = {}
        for backend, model in (("pytorch", segformer_run), ("onnx", output)):
            folder = tmp_path / f"{backend}_{mode[1]}"
            predict_main(["--model", str(model), "--input", str(images), "--output", str(folder),
                          "--backend", backend, "--device", "cpu", *mode])  # fmt: skip
            written[backend] = {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}
        assert len(written["onnx"]) == 3 and written["onnx"].keys() == written["pytorch"].keys()
        for name, mask in written["pytorch"].items():
            assert (mask == written["onnx"][name]).mean() >= 0.999, (mode, name)


@pytest.mark.slow
def test_evaluate_with_onnx_backend_scores_as_pytorch(segformer_run, segformer_export, tmp_path):
    from hfseg.evaluation.evaluate_model import main as evaluate_main

    output, _ = segformer_export
    results = {}
    for backend, model in (("pytorch", segformer_run), ("onnx", output)):
        evaluate_main(["--model", str(model), "--backend", backend, "--dataset_name", "synthetic",
                       "--synthetic_eval_size", "4", "--output_dir", str(tmp_path / backend), "--report_to", "none",
                       "--per_device_eval_batch_size", "2"])  # fmt: skip
        results[backend] = json.loads((tmp_path / backend / "eval_results.json").read_text())
    pytorch, onnx = np.array(results["pytorch"]["confusion_matrix"]), np.array(results["onnx"]["confusion_matrix"])
    assert pytorch.sum() == onnx.sum() > 0
    assert np.abs(pytorch - onnx).sum() <= 0.002 * pytorch.sum()
    assert results["onnx"]["eval_mean_iou"] == pytest.approx(results["pytorch"]["eval_mean_iou"], abs=1e-3)


@pytest.mark.slow
def test_dynamic_int8_report_has_the_miou_drop(segformer_run, tmp_path):
    report = export(segformer_run, tmp_path, "--quantize", "dynamic-int8", "--max_miou_drop", "100")
    assert report["quantize"] == "dynamic-int8"
    assert report["mean_iou_drop_points"] == pytest.approx(
        100 * (report["torch"]["mean_iou"] - report["onnx"]["mean_iou"])
    )
    assert report["file_sizes_mb"]["onnx"] < report["file_sizes_mb"]["onnx_fp32"]
    assert "dynamic-int8" in (tmp_path / "README.md").read_text()
    check_report(report, tmp_path)  # within --max_miou_drop 100
    thresholds = {**report["thresholds"], "max_miou_drop_points": 1}
    too_strict = {**report, "mean_iou_drop_points": 2.0, "thresholds": thresholds}
    with pytest.raises(HfsegError, match=r"dynamic-int8 loses 2\.00 mIoU points .* more than --max_miou_drop 1;"):
        check_report(too_strict, tmp_path)


@pytest.mark.slow
def test_fp16_export_stores_half_weights_and_segments_like_pytorch(segformer_run, tmp_path):
    """fp16 weights (ONNX Runtime's float16 converter), fp32 inputs and outputs: half-precision weights, nearly
    every pixel as PyTorch labels it, held to --max_miou_drop like int8."""
    import onnx
    import onnxruntime
    from onnx import numpy_helper

    report = export(segformer_run, tmp_path, "--dtype", "fp16")
    assert report["dtype"] == "fp16" and report["quantize"] is None
    assert report["pixel_agreement"] >= 0.99 and report["mean_iou_drop_points"] <= 1.0
    weights = onnx.load(str(tmp_path / "model.onnx")).graph.initializer
    halves = sum(numpy_helper.to_array(w).size for w in weights if w.data_type == onnx.TensorProto.FLOAT16)
    singles = sum(numpy_helper.to_array(w).size for w in weights if w.data_type == onnx.TensorProto.FLOAT)
    assert halves > 10 * singles  # the weights are stored in half precision
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"


@pytest.mark.slow
def test_upernet_fp32_export_matches_pytorch(tmp_path):
    from transformers import SegformerImageProcessor

    from hfseg.config import ModelArguments
    from hfseg.models.build import build_model

    run = tmp_path / "upernet_run"
    args = ModelArguments(model_type="upernet", config_overrides=json.dumps(TINY_UPERNET))
    build_model(args, SYNTHETIC_ID2LABEL).save_pretrained(run)
    SegformerImageProcessor(size={"height": 64, "width": 64}, do_reduce_labels=False).save_pretrained(run)
    report = export(run, tmp_path / "onnx")
    assert report["model_type"] == "upernet" and report["pixel_agreement"] >= 0.999


def test_missing_run_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        export_main([str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")])
    assert stopped.value.code == 2
    assert f"run {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def test_output_into_a_saved_model_is_refused_and_the_model_kept(segformer_run, capsys):
    before = {path.name: path.read_bytes() for path in segformer_run.iterdir() if path.is_file()}
    with pytest.raises(SystemExit) as stopped:
        export_main([str(segformer_run), "--output", str(segformer_run)])
    assert stopped.value.code == 2
    assert f"--output {segformer_run} holds a saved model" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in segformer_run.iterdir() if path.is_file()} == before


def test_onnx_backend_needs_an_export_folder(segformer_run, tmp_path, capsys):
    from hfseg.evaluation.predict import main as predict_main

    with pytest.raises(SystemExit) as stopped:
        predict_main(["--model", str(segformer_run), "--input", str(tmp_path), "--backend", "onnx"])
    assert stopped.value.code == 2
    assert "no model.onnx there; --backend onnx takes the --output folder of `hfseg export" in capsys.readouterr().err


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(
        HfsegError, match=r"needs onnxruntime, which are not installed; run `pip install 'hfseg\[export\]'`"
    ):
        require_export_extra()


def test_card_section_states_both_backends():
    report = {
        "file": "model.onnx", "dtype": "fp32", "quantize": "static-int8", "exporter": "torch.onnx.export (dynamo)",
        "num_images": 4, "data": "synthetic", "pixel_agreement": 0.99875, "mean_iou_drop_points": 0.5,
        "torch": {"mean_iou": 0.8, "images_per_second": 10.0}, "onnx": {"mean_iou": 0.795, "images_per_second": 25.5},
        "file_sizes_mb": {"pytorch": 1.5, "onnx": 0.5}, "machine": {"cpu_count": 2},
    }  # fmt: skip
    section = export_card_section(report)
    assert "(fp32, static-int8, torch.onnx.export (dynamo), ONNX Runtime CPU)" in section
    assert "| mIoU | 0.8000 | 0.7950 |" in section and "| images/s (2 CPUs) | 10.00 | 25.50 |" in section
    assert "| file size (MB) | 1.50 | 0.50 |" in section and "Pixel agreement 99.875%" in section
