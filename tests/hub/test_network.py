"""The network edge: before anything loads, one message names every Hub source that cannot load, with the local
alternative for each."""

import pytest
from conftest import ROOT

from hfseg.config import parse_args
from hfseg.errors import HfsegError
from hfseg.hub.network import hub_sources, require_hub_sources

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Point the Hub cache and datasets' cache at empty folders (the libraries read these at call time)."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    return tmp_path


def cache_model(cache, repo_id: str) -> None:
    snapshot = cache / "hub" / f"models--{repo_id.replace('/', '--')}"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text(COMMIT)
    (snapshot / "snapshots" / COMMIT).mkdir(parents=True)
    (snapshot / "snapshots" / COMMIT / "config.json").write_text('{"model_type": "segformer"}')


def cache_dataset(cache, name: str) -> None:
    (cache / "datasets" / name / "scene_parsing" / "0.0.0" / "abc123").mkdir(parents=True)


def ade_sources(tmp_path, *extra: str):
    model_args, data_args, _ = parse_args(["--recipe", "segformer_ade", "--output_dir", str(tmp_path), *extra])
    return hub_sources(model_args, data_args)


def test_offline_names_every_source_missing_from_the_cache(empty_caches):
    sources = ade_sources(empty_caches)
    assert sources == [("--dataset_name", "scene_parse_150"), ("--model_name_or_path", "nvidia/mit-b0")]
    with pytest.raises(HfsegError) as error:
        require_hub_sources(sources)
    message = str(error.value)
    assert message.startswith("cannot load --dataset_name scene_parse_150 and --model_name_or_path nvidia/mit-b0: ")
    assert "HF_HUB_OFFLINE=1" in message
    assert "--model_name_or_path a local checkpoint directory" in message and "--data_dir DIR --layout NAME" in message


def test_offline_names_only_what_is_not_cached(empty_caches):
    sources = ade_sources(empty_caches)
    cache_model(empty_caches, "nvidia/mit-b0")
    with pytest.raises(HfsegError, match=r"^cannot load --dataset_name scene_parse_150: ") as error:
        require_hub_sources(sources)
    assert "nvidia/mit-b0" not in str(error.value)
    cache_dataset(empty_caches, "scene_parse_150")
    require_hub_sources(sources)  # both in the caches: the libraries load them offline


def test_unreachable_hub_names_every_hub_source(tmp_path, monkeypatch):
    from hfseg.hub import network

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the network edge: a closed local port
    network.hub_reachable.cache_clear()
    try:
        with pytest.raises(HfsegError, match=r"cannot load --dataset_name scene_parse_150 and --model_name_or_path"):
            require_hub_sources(ade_sources(tmp_path))
    finally:
        network.hub_reachable.cache_clear()


def test_local_synthetic_and_path_sources_need_no_hub(tmp_path):
    assert ade_sources(tmp_path, "--dataset_name", "synthetic", "--model_name_or_path", str(tmp_path)) == []
    # a layout folder wins over --dataset_name; a path that does not exist is left to its loader's message
    assert ade_sources(tmp_path, "--data_dir", str(ROOT), "--layout", "ade20k", "--model_name_or_path", "./x") == []
    model_args, data_args, _ = parse_args(["--recipe", "demo", "--output_dir", str(tmp_path)])
    assert hub_sources(model_args, data_args) == []
    model_args.backbone_name_or_path = "facebook/convnext-tiny-224"
    assert hub_sources(model_args, data_args) == [("--backbone_name_or_path", "facebook/convnext-tiny-224")]


def test_finetune_offline_stops_before_loading_anything(empty_caches, capsys):
    from hfseg.finetune import main

    output_dir = empty_caches / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["--recipe", "segformer_ade", "--output_dir", str(output_dir)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if "hfseg: error:" in line]
    assert "--dataset_name scene_parse_150 and --model_name_or_path nvidia/mit-b0" in line
    assert not output_dir.exists(), "nothing may be written before the sources are known to load"
