"""Model cards the Hub parses, and pushes to a stand-in for the Hub (tests/hub_stub.py): which files, which repo
and revision, retries, failures that leave the run intact, and a planted token that never reaches a file or log."""

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_run_args
from hub_stub import STUB_USER, HubStub, http_error, read_calls, token_digest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hfseg.errors import HfsegError
from hfseg.hub.card import build_model_card, card_from_run, hub_dataset_id, write_model_card
from hfseg.hub.push import files_to_push, main, push_run

FLAG_TOKEN = "hf_PLANTEDflagTOKEN0123456789abcdefXYZ"
ENV_TOKEN = "hf_PLANTEDenvTOKEN0123456789abcdefXYZ"
PUBLISHED = {
    "README.md", "config.json", "eval_results.json", "hfseg_config.yaml", "model.safetensors",
    "predictions.png", "preprocessor_config.json", "training_curves.png",
}  # fmt: skip
METRICS = {
    "eval_mean_iou": 0.5123456789,
    "eval_mean_accuracy": 0.6,
    "eval_overall_accuracy": 0.875,
    "eval_per_category_iou": [0.9, 0.1234567, float("nan")],
    "eval_per_category_accuracy": [0.95, 0.2, float("nan")],
}
ID2LABEL = {0: "road", 1: "car", 2: "sky"}


def metric_values(eval_results) -> dict:
    return {result.metric_type: result.metric_value for result in eval_results}


def test_card_round_trips_metrics_through_model_index(tmp_path):
    config = {"dataset_name": "scene_parse_150", "recipe": "segformer_ade", "learning_rate": 6e-5,
              "reference_mean_iou": 0.374, "reference_source": "SegFormer paper", "card_license": "other"}  # fmt: skip
    card = build_model_card(
        METRICS, ID2LABEL, "tiny-seg", config=config, base_model="nvidia/mit-b0", eval_mode="slide",
        predictions_image="predictions.png", model_ref="me/tiny-seg",
    )  # fmt: skip
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    expected = {"mean_iou": 0.5123456789, "mean_accuracy": 0.6, "overall_accuracy": 0.875}
    assert metric_values(loaded.data.eval_results) == expected
    name, results = model_index_to_eval_results(loaded.data.to_dict()["model-index"])
    assert name == "tiny-seg" and metric_values(results) == expected
    for result in results:
        assert result.task_type == "image-segmentation"
        assert (result.dataset_type, result.dataset_split, result.metric_config) == (
            "scene_parse_150",
            "validation",
            "slide",
        )
    data = loaded.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "image-segmentation", "other")
    assert data.base_model == "nvidia/mit-b0" and data.datasets == ["scene_parse_150"]
    assert "hfseg" in data.tags
    body = loaded.text
    assert "`road`, `car`, `sky`" in body
    assert "| 1 | car | 0.1235 | 0.2000 |" in body and "| 2 | sky | n/a | n/a |" in body
    assert "| reference: SegFormer paper | 0.3740 |" in body and "| difference | +0.1383 |" in body
    assert "![predictions](predictions.png)" in body
    assert 'pipeline("image-segmentation", model="me/tiny-seg")' in body
    assert "- learning_rate: 6e-05" in body and "recipe `segformer_ade`" in body
    # the rerun commands that work wherever hfseg is installed, beside the repository's script path
    assert "hfseg finetune --recipe hfseg_config.yaml" in body
    assert "accelerate launch -m hfseg.finetune --recipe hfseg_config.yaml" in body
    assert "Weakest classes on the evaluation set (IoU): `car` (0.1235), `road` (0.9000)." in body


def test_card_metadata_names_only_hub_datasets_and_skips_nan_metrics(tmp_path):
    assert hub_dataset_id("scene_parse_150") == "scene_parse_150"
    assert hub_dataset_id("synthetic") is None and hub_dataset_id(str(tmp_path)) is None
    assert hub_dataset_id("not a repo id!") is None
    card = build_model_card({"mean_iou": 0.25, "mean_accuracy": float("nan"), "overall_accuracy": 0.5}, ID2LABEL,
                            "m", config={"dataset_name": "synthetic", "model_type": "segformer"})  # fmt: skip
    assert card.data.datasets is None and card.data.base_model is None and card.data.license == "apache-2.0"
    assert metric_values(card.data.eval_results) == {"mean_iou": 0.25, "overall_accuracy": 0.5}
    assert "Compared with the recipe's reference" not in card.text


def test_nan_mean_iou_never_reaches_a_card(tmp_path):
    nan_run = {"eval_mean_iou": float("nan"), "eval_overall_accuracy": float("nan"), "eval_per_category_iou": []}
    with pytest.raises(HfsegError, match="mean_iou NaN"):
        write_model_card(tmp_path, metrics=nan_run, id2label=ID2LABEL, model_name="m")
    assert not (tmp_path / "README.md").exists()


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory):
    """A tiny model fine-tuned and pushed with --push_to_hub to the stub, a token planted in flag and env
    (a subprocess: its whole stdout/stderr is searched for the token)."""
    root = tmp_path_factory.mktemp("pushed")
    output_dir, remote = root / "tiny-seg", root / "remote"
    env = {**os.environ, "HF_TOKEN": ENV_TOKEN, "HF_HOME": str(root / "hf_home")}
    flags = tiny_run_args(output_dir, "--push_to_hub", "--hub_model_id", f"{STUB_USER}/tiny-seg",
                          "--hub_revision", "exp1", "--hub_token", FLAG_TOKEN)  # fmt: skip
    script = ROOT / "hfseg" / "finetune.py"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "hub_stub.py"), str(remote), str(script), *flags],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, remote, result.stdout + result.stderr


@pytest.mark.slow
def test_finetune_push_to_hub_uploads_publishable_files_once(pushed_run):
    output_dir, remote, _ = pushed_run
    calls = read_calls(remote)
    uploads = [call for call in calls if call["method"] == "upload_folder"]
    assert len(uploads) == 1, "one final push, after the card exists (Trainer's own push is not used)"
    upload = uploads[0]
    assert (upload["repo_id"], upload["revision"]) == (f"{STUB_USER}/tiny-seg", "exp1")
    assert set(upload["files"]) == PUBLISHED
    assert (output_dir / "training_args.bin").is_file(), "the local run keeps Trainer's pickle; it is not uploaded"
    assert "training_args.bin" in upload["delete_patterns"]
    assert {"method": "create_branch", "repo_id": f"{STUB_USER}/tiny-seg", "branch": "exp1"}.items() <= next(
        call for call in calls if call["method"] == "create_branch"
    ).items()
    assert upload["token"] == token_digest(FLAG_TOKEN), "--hub_token is the token used for the push"


@pytest.mark.slow
def test_pushed_card_parses_and_shows_the_run_metrics(pushed_run):
    output_dir, remote, _ = pushed_run
    pushed = remote / STUB_USER / "tiny-seg" / "exp1"
    evaluated = json.loads((pushed / "eval_results.json").read_text())
    card = ModelCard.load(pushed / "README.md")
    expected = {key: evaluated[f"eval_{key}"] for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
    assert metric_values(card.data.eval_results) == expected
    assert metric_values(model_index_to_eval_results(card.data.to_dict()["model-index"])[1]) == expected
    assert card.data.pipeline_tag == "image-segmentation" and card.data.library_name == "transformers"
    assert f'model="{STUB_USER}/tiny-seg"' in card.text
    assert "![predictions](predictions.png)" in card.text and (pushed / "predictions.png").is_file()
    config = json.loads((pushed / "config.json").read_text())
    assert config["id2label"]["1"] == "disc"


@pytest.mark.slow
def test_planted_token_is_in_no_output_file_and_no_log(pushed_run):
    output_dir, remote, log = pushed_run
    assert log.strip(), "the run's output was captured"
    for token in (FLAG_TOKEN, ENV_TOKEN):
        assert token not in log
        for path in [*output_dir.rglob("*"), *remote.rglob("*")]:
            if path.is_file():
                assert token.encode() not in path.read_bytes(), f"token found in {path}"


@pytest.fixture
def finished_run(tmp_path):
    """A finished-run folder assembled from real parts without training (tiny model, processor, metrics, config,
    card, pictures), plus Trainer's training_args.bin pickle, which must never be published."""
    import torch
    import yaml
    from conftest import tiny_model
    from PIL import Image

    from hfseg.config import ModelArguments
    from hfseg.hub.card import write_model_card
    from hfseg.models.build import build_image_processor

    run = tmp_path / "tiny-seg"
    model = tiny_model(num_labels=3)
    model.config.id2label, model.config.label2id = ID2LABEL, {name: i for i, name in ID2LABEL.items()}
    model.save_pretrained(run)
    build_image_processor(ModelArguments(model_type="segformer", image_size=64)).save_pretrained(run)
    metrics = {key: value for key, value in METRICS.items() if "per_category" not in key}
    (run / "eval_results.json").write_text(json.dumps(metrics))
    config = {"model_type": "segformer", "dataset_name": "synthetic", "max_steps": 4, "hub_token": None}
    (run / "hfseg_config.yaml").write_text(yaml.safe_dump(config))
    for name in ("predictions.png", "training_curves.png"):
        Image.new("RGB", (8, 8)).save(run / name)
    torch.save({"hub_token": None}, run / "training_args.bin")
    write_model_card(run, metrics=metrics, id2label=ID2LABEL, model_name="tiny-seg", config=config)
    return run


def digests(folder, skip=("README.md",)) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name not in skip}


def test_push_cli_retries_transient_failures_then_pushes(finished_run, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    stub = HubStub(tmp_path / "remote", failures={"upload_folder": [http_error(503), ConnectionError("reset")]})
    stub.install(monkeypatch.setattr)
    url = main([str(finished_run), "--repo_id", "me/seg", "--private", "--revision", "v2", "--retry_delay", "0"])
    assert url.startswith("https://huggingface.co/me/seg/commit/")
    assert stub.calls_of("create_repo")[0]["private"] is True
    assert stub.calls_of("create_branch")[0]["branch"] == "v2"
    uploads = stub.calls_of("upload_folder")
    assert len(uploads) == 3 and uploads[-1]["revision"] == "v2" and uploads[-1]["repo_id"] == "me/seg"
    assert set(uploads[-1]["files"]) == PUBLISHED
    assert 'model="me/seg"' in (tmp_path / "remote" / "me" / "seg" / "v2" / "README.md").read_text()
    assert "attempt 2 of 4" in caplog.text
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, caplog.text):
        assert ENV_TOKEN not in text
    for path in [*finished_run.iterdir(), *(tmp_path / "remote").rglob("*")]:
        assert not path.is_file() or ENV_TOKEN.encode() not in path.read_bytes(), path


def test_backoff_doubles_between_attempts(finished_run, tmp_path, monkeypatch):
    stub = HubStub(tmp_path / "remote", failures={"create_repo": [http_error(502), http_error(429)]})
    stub.install(monkeypatch.setattr)
    delays = []
    push_run(finished_run, "me/seg", token=ENV_TOKEN, retry_delay=1.5, sleep=delays.append)
    assert delays == [1.5, 3.0]
    assert len(stub.calls_of("create_repo")) == 3 and len(stub.calls_of("upload_folder")) == 1


def test_failed_push_leaves_run_intact_and_says_how_to_retry(finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    before = digests(finished_run, skip=())  # README.md too: the card rebuilt for the push is put back
    stub = HubStub(tmp_path / "remote", failures={"upload_folder": [http_error(503)] * 3})
    stub.install(monkeypatch.setattr)
    with pytest.raises(SystemExit) as exit_info:
        main([str(finished_run), "--repo_id", "me/seg", "--revision", "v2", "--max_attempts", "3",
              "--retry_delay", "0"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"retry with `hfseg push {finished_run} --repo_id me/seg --revision v2`" in err
    assert "intact" in err and "503" in err and "Traceback" not in err and ENV_TOKEN not in err
    assert len(stub.calls_of("upload_folder")) == 3
    assert digests(finished_run, skip=()) == before
    assert ModelCard.load(finished_run / "README.md").data.eval_results, "the card is still valid"


def test_client_errors_are_not_retried(finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    stub = HubStub(tmp_path / "remote", failures={"upload_folder": [http_error(403)]}).install(monkeypatch.setattr)
    with pytest.raises(SystemExit):
        main([str(finished_run), "--repo_id", "me/seg", "--retry_delay", "0"])
    assert len(stub.calls_of("upload_folder")) == 1
    assert "403" in capsys.readouterr().err


def test_push_without_token_fails_before_any_hub_call(finished_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    stub = HubStub(tmp_path / "remote").install(monkeypatch.setattr)
    with pytest.raises(SystemExit):
        main([str(finished_run), "--repo_id", "me/seg"])
    assert "HF_TOKEN" in capsys.readouterr().err and stub.calls == []


def test_only_safetensors_weights_are_published(finished_run):
    assert "model.safetensors" in files_to_push(finished_run)
    (finished_run / "pytorch_model.bin").write_bytes(b"pickle")
    assert not any(name.endswith(".bin") for name in files_to_push(finished_run))
    (finished_run / "model.safetensors").unlink()
    with pytest.raises(Exception, match="no \\*.safetensors"):
        files_to_push(finished_run)


def test_card_from_run_names_the_repo(finished_run):
    card = card_from_run(finished_run, model_ref="me/seg")
    assert card.data.model_name == "seg" and 'model="me/seg"' in card.text
    assert metric_values(card.data.eval_results) == {"mean_iou": 0.5123456789, "mean_accuracy": 0.6,
                                                     "overall_accuracy": 0.875}  # fmt: skip


def test_card_of_a_mask_classification_run_asks_the_pipeline_for_semantic_masks(finished_run):
    assert "subtask" not in card_from_run(finished_run).text
    config_path = finished_run / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "model_type": "mask2former"}))
    assert "segmenter(\"image.jpg\", subtask='semantic')" in card_from_run(finished_run).text
    written = write_model_card(finished_run, metrics=METRICS, id2label=ID2LABEL, model_name="m2f").read_text()
    assert "subtask='semantic'" in written


def test_offline_mode_is_named_instead_of_a_traceback(finished_run, monkeypatch, capsys):
    """No stub here: the real HfApi refuses with HF_HUB_OFFLINE=1 (set by conftest) before opening a connection."""
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    with pytest.raises(SystemExit) as exit_info:
        main([str(finished_run), "--repo_id", "me/seg"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "HF_HUB_OFFLINE is set" in err and "hfseg push" in err


def test_cli_lists_and_runs_push(finished_run, tmp_path, monkeypatch):
    from hfseg import cli

    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    monkeypatch.setattr(sys, "argv", ["hfseg"])
    stub = HubStub(tmp_path / "remote").install(monkeypatch.setattr)
    cli.main(["push", str(finished_run), "--repo_id", "me/seg", "--keep_card"])
    assert stub.calls_of("upload_folder")[0]["repo_id"] == "me/seg"
    assert (finished_run / "README.md").read_bytes() == (tmp_path / "remote/me/seg/main/README.md").read_bytes()


def test_push_of_a_truncated_model_is_refused_before_any_hub_call(finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    stub = HubStub(tmp_path / "remote").install(monkeypatch.setattr)
    weights = finished_run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    card = (finished_run / "README.md").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main([str(finished_run), "--repo_id", "me/seg"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"{weights} is truncated or not a safetensors file" in err
    assert stub.calls == [] and (finished_run / "README.md").read_bytes() == card


def closed_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("offline", [True, False])
def test_push_to_hub_offline_stops_before_training(tmp_path, monkeypatch, capsys, offline):
    from hfseg.finetune import main as finetune_main
    from hfseg.hub.network import hub_reachable

    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    if not offline:  # online mode, but the endpoint is a closed local port: no packet leaves the machine
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_local_port()}")
    hub_reachable.cache_clear()
    output_dir = tmp_path / "out"
    try:
        with pytest.raises(SystemExit) as exit_info:
            finetune_main(tiny_run_args(output_dir, "--push_to_hub", "--hub_model_id", "me/seg"))
    finally:
        hub_reachable.cache_clear()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("hfseg: error:")]
    reason = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face Hub (http://127.0.0.1:"
    assert len(lines) == 1 and f"--push_to_hub: {reason}" in lines[0], err
    assert "stopped before training" in lines[0] and "hfseg push OUTPUT_DIR" in lines[0]
    assert not output_dir.exists()


def test_push_with_space_pushes_the_model_then_a_gradio_space_that_loads_it(finished_run, tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    stub = HubStub(tmp_path / "remote").install(monkeypatch.setattr)
    main([str(finished_run), "--repo_id", "me/seg", "--with_space", "--space_id", "me/seg-demo"])
    model_repo, space_repo = stub.calls_of("create_repo")
    assert "repo_type" not in model_repo and model_repo["repo_id"] == "me/seg"
    assert (space_repo["repo_id"], space_repo["repo_type"], space_repo["space_sdk"]) == (
        "me/seg-demo",
        "space",
        "gradio",
    )
    model_upload, space_upload = stub.calls_of("upload_folder")
    assert set(model_upload["files"]) == PUBLISHED and "repo_type" not in model_upload
    assert space_upload["repo_type"] == "space" and set(space_upload["files"]) == {
        "app.py",
        "requirements.txt",
        "README.md",
    }
    space = tmp_path / "remote" / "spaces" / "me" / "seg-demo" / "main"
    assert "MODEL = 'me/seg'" in (space / "app.py").read_text()
    front_matter = yaml.safe_load((space / "README.md").read_text().split("---")[1])
    assert front_matter["sdk"] == "gradio" and front_matter["models"] == ["me/seg"]
    assert (tmp_path / "remote" / "me" / "seg" / "main" / "model.safetensors").is_file()
