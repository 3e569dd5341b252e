"""`hfseg push --adapter_only`: only the LoRA adapter and its card go to the Hub (a stand-in, tests/hub_stub.py),
and the card's peft snippet rebuilds the run's merged model from the base model and the pushed adapter."""

import json
import re

import pytest
import torch
import yaml
from conftest import tiny_model
from hub_stub import HubStub, http_error
from huggingface_hub import ModelCard
from transformers import AutoModelForSemanticSegmentation

from hfseg.errors import HfsegError
from hfseg.hub.push import main, push_run
from hfseg.models.lora import apply_lora, merged_model, save_adapter

TOKEN = "hf_PLANTEDadapterTOKEN0123456789abcdef"
BASE_ID = "me/tiny-base"
ID2LABEL = {0: "road", 1: "car", 2: "sky"}


@pytest.fixture
def lora_run(tmp_path):
    """A finished --peft lora run assembled from real parts (no training): the base model saved apart (a stand-in
    for the Hub checkpoint `BASE_ID` the run names), the adapter with non-zero updates, the merged model."""
    torch.manual_seed(0)
    base = tiny_model(num_labels=len(ID2LABEL))
    base.config.id2label, base.config.label2id = ID2LABEL, {name: i for i, name in ID2LABEL.items()}
    base_dir = tmp_path / "base"
    base.save_pretrained(base_dir)
    peft_model = apply_lora(base, 4, 8, 0.0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:  # as if trained: adapters and head moved
                parameter.add_(0.05 * torch.randn_like(parameter))
    run = tmp_path / "lora-run"
    save_adapter(peft_model, run)
    merged_model(peft_model).save_pretrained(run)
    config = {"model_name_or_path": BASE_ID, "dataset_name": "scene_parse_150", "peft": "lora", "lora_r": 4,
              "lora_alpha": 8, "learning_rate": 5e-4, "revision": "main"}  # fmt: skip
    (run / "hfseg_config.yaml").write_text(yaml.safe_dump(config))
    (run / "eval_results.json").write_text(json.dumps({"eval_mean_iou": 0.4321}))
    return run, base_dir


def test_adapter_only_pushes_the_adapter_and_a_card_whose_snippet_loads_it(lora_run, tmp_path, monkeypatch):
    run, base_dir = lora_run
    stub = HubStub(tmp_path / "remote").install(monkeypatch.setattr)
    push_run(run, "me/seg-lora", token=TOKEN, adapter_only=True)
    upload = stub.calls_of("upload_folder")[0]
    assert sorted(upload["files"]) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    pushed = tmp_path / "remote" / "me" / "seg-lora" / "main"
    card = ModelCard.load(pushed / "README.md")
    assert (card.data.base_model, card.data.library_name) == (BASE_ID, "peft")
    assert card.data.datasets == ["scene_parse_150"] and "Mean IoU on its evaluation set: 0.4321" in card.text
    # The card's snippet, run as written with the two names pointed at local copies, gives the merged model.
    code = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert f'from_pretrained(\n    "{BASE_ID}",' in code and 'PeftModel.from_pretrained(base, "me/seg-lora")' in code
    code = code.replace(f'"{BASE_ID}"', repr(str(base_dir))).replace('"me/seg-lora"', repr(str(pushed)))
    code = code.replace("processor = AutoImageProcessor", "# processor = AutoImageProcessor")  # none saved here
    namespace = {}
    exec(code, namespace)
    loaded = namespace["model"].eval()
    expected = AutoModelForSemanticSegmentation.from_pretrained(run).eval()
    assert type(loaded) is type(expected) and loaded.config.id2label == ID2LABEL
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=pixels).logits, expected(pixel_values=pixels).logits, atol=1e-5)
        base_logits = AutoModelForSemanticSegmentation.from_pretrained(base_dir)(pixel_values=pixels).logits
    assert not torch.allclose(base_logits, expected(pixel_values=pixels).logits, atol=1e-3), "the adapter matters"


def test_adapter_only_of_a_run_without_adapter_is_refused(lora_run, tmp_path, monkeypatch, capsys):
    run, _ = lora_run
    for path in (run / "adapter").iterdir():
        path.unlink()
    (run / "adapter").rmdir()
    stub = HubStub(tmp_path / "remote").install(monkeypatch.setattr)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--repo_id", "me/seg-lora", "--adapter_only"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"--adapter_only: {run} has no adapter/ folder" in err and "--peft lora" in err
    assert stub.calls == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "segformer", "model_name_or_path": None}, "model_type 'segformer' (a random-init model)"),
        ({"model_name_or_path": "/data/checkpoints/base"}, "is a local folder"),
        ({"task": "binary"}, "task binary"),
    ],
)
def test_adapter_only_refuses_a_base_model_the_card_cannot_name(lora_run, tmp_path, monkeypatch, change, message):
    run, _ = lora_run
    config_path = run / "hfseg_config.yaml"
    config_path.write_text(yaml.safe_dump({**yaml.safe_load(config_path.read_text()), **change}))
    stub = HubStub(tmp_path / "remote").install(monkeypatch.setattr)
    with pytest.raises(HfsegError, match=re.escape(message)):
        push_run(run, "me/seg-lora", token=TOKEN, adapter_only=True)
    assert stub.calls == []


def test_failed_adapter_push_restores_the_adapter_folder_and_names_the_retry(lora_run, tmp_path, monkeypatch):
    run, _ = lora_run
    before = {path.name: path.read_bytes() for path in (run / "adapter").iterdir()}
    HubStub(tmp_path / "remote", failures={"upload_folder": [http_error(403)]}).install(monkeypatch.setattr)
    with pytest.raises(HfsegError, match=re.escape(f"retry with `hfseg push {run} --repo_id me/x --adapter_only`")):
        push_run(run, "me/x", token=TOKEN, adapter_only=True, retry_delay=0)
    assert {path.name: path.read_bytes() for path in (run / "adapter").iterdir()} == before
