"""Hub-style sources read locally: datasets folders with id2label.json, odd column names, parquet streaming."""

import json

import pytest
import torch
from conftest import tiny_run_args
from datasets import DatasetDict, IterableDataset

from hfseg.config import DataArguments
from hfseg.data.adapters import build_label_spec, load_source, open_source
from hfseg.data.preprocess import attach_transform
from hfseg.data.synthetic import make_synthetic_dataset
from hfseg.data.transforms import EvalTransform
from hfseg.errors import HfsegError


@pytest.fixture(scope="module")
def renamed_folder(tmp_path_factory):
    """The synthetic data saved with `save_to_disk`, columns renamed, class names in id2label.json."""
    root = tmp_path_factory.mktemp("hub")
    data = make_synthetic_dataset(train_size=6, eval_size=3, seed=3, min_size=32, max_size=48)
    data = DatasetDict(
        {split: ds.rename_columns({"image": "photo", "annotation": "seg"}) for split, ds in data.items()}
    )
    data["train"] = data["train"].add_column("caption", ["x"] * 6)
    data.save_to_disk(str(root / "saved"))
    (root / "saved" / "id2label.json").write_text(json.dumps({str(i): f"class{i}" for i in range(5)}))
    data["train"].to_parquet(str(root / "train.parquet"))
    return root


def test_local_folder_columns_by_feature_type_and_id2label_json(renamed_folder):
    source = load_source(DataArguments(dataset_name=str(renamed_folder / "saved")))
    assert (source.image_column, source.label_column) == ("photo", "seg")
    assert source.id2label == {i: f"class{i}" for i in range(5)}
    assert len(source.dataset["train"]) == 6 and len(source.dataset["validation"]) == 3
    with pytest.raises(HfsegError, match="column 'mask' \\(--label_column\\) not found"):
        open_source(DataArguments(dataset_name=str(renamed_folder / "saved"), label_column="mask"))


def test_streaming_parquet_holds_out_and_transforms(renamed_folder):
    data_args = DataArguments(
        dataset_name=str(renamed_folder / "train.parquet"), streaming=True, max_eval_samples=2,
        id2label_file=str(renamed_folder / "saved" / "id2label.json"),
    )  # fmt: skip
    source = load_source(data_args)
    assert isinstance(source.dataset["train"], IterableDataset)
    spec = build_label_spec(source, data_args)
    train = attach_transform(
        source.dataset["train"], source.image_column, source.label_column, spec, EvalTransform(32)
    )
    examples = list(train)
    assert len(examples) == 4  # 6 rows, the first 2 held out for validation
    assert examples[0]["pixel_values"].shape == (3, 32, 32) and examples[0]["labels"].dtype == torch.int64
    held_out = list(source.dataset["validation"])
    expected = DatasetDict.load_from_disk(str(renamed_folder / "saved"))["train"][0]["seg"]
    assert len(held_out) == 2 and held_out[0]["seg"].size == expected.size
    data_args.max_eval_samples = None
    with pytest.raises(HfsegError, match="--max_eval_samples N"):
        load_source(data_args)


def test_id2label_json_from_the_hub_repo(renamed_folder, monkeypatch):
    """The network edge (hf_hub_download, Hub loading) is mocked; the rest is ours."""
    import huggingface_hub

    import hfseg.data.adapters.hub as hub

    names = renamed_folder / "names.json"
    names.write_text(json.dumps({"0": "sea", "1": "land"}))
    calls = []

    def fake_download(repo_id, filename, repo_type=None, **kwargs):
        calls.append((repo_id, filename, repo_type))
        return str(names)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    # datasets' loader is the other network edge; hfseg's own Hub path (_load_hub_dataset) runs as it is.
    monkeypatch.setattr(hub, "load_dataset", lambda name, config=None, streaming=False, **kwargs: (
        DatasetDict.load_from_disk(str(renamed_folder / "saved"))))  # fmt: skip
    source = open_source(DataArguments(dataset_name="someone/coast-seg"))
    assert calls == [("someone/coast-seg", "id2label.json", "dataset")]
    assert source.id2label == {0: "sea", 1: "land"}


@pytest.mark.slow
def test_finetune_streams_with_max_steps(renamed_folder, tmp_path):
    from hfseg.finetune import main as finetune

    argv = tiny_run_args(tmp_path / "out")
    position = argv.index("--dataset_name")
    argv[position + 1] = str(renamed_folder / "train.parquet")
    argv += ["--streaming", "--max_eval_samples", "2", "--max_steps", "2", "--image_size", "32", "--crop_size", "32"]
    argv += ["--id2label_file", str(renamed_folder / "saved" / "id2label.json")]
    metrics = finetune(argv)
    assert 0.0 <= metrics["eval_overall_accuracy"] <= 1.0
    assert (tmp_path / "out" / "predictions.png").is_file()


def test_parquet_relative_image_paths_read_from_its_folder(tmp_path, monkeypatch):
    """A parquet whose image column holds `{"path": "imgs/N.png", "bytes": None}`, used from another folder: paths
    that exist next to the parquet are read from there; one that exists nowhere is named, relative to what."""
    import numpy as np
    import pyarrow.parquet
    from datasets import Dataset, Features, Image, Value
    from PIL import Image as PILImage

    from hfseg.data.doctor import scan_source

    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    for index in range(3):
        PILImage.fromarray(np.full((6, 8, 3), 40 * index, dtype=np.uint8)).save(data / "imgs" / f"{index}.png")
        PILImage.fromarray(np.full((6, 8), index % 2, dtype=np.uint8)).save(data / "imgs" / f"{index}_mask.png")
    rows = {
        "image": [{"path": f"imgs/{index}.png", "bytes": None} for index in (0, 1, 2, 3)],  # imgs/3.png: nowhere
        "annotation": [{"path": f"imgs/{index % 3}_mask.png", "bytes": None} for index in (0, 1, 2, 3)],
        "name": ["a", "b", "c", "d"],
    }
    features = Features({"image": Image(), "annotation": Image(), "name": Value("string")})
    table = Dataset.from_dict(rows, features=features).data.table  # `to_parquet` would look the paths up from here
    pyarrow.parquet.write_table(table, data / "train.parquet")
    (data / "id2label.json").write_text(json.dumps({"0": "dark", "1": "light"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    data_args = DataArguments(dataset_name=str(data / "train.parquet"))
    source = open_source(data_args)
    train = source.dataset["train"]
    assert train[2]["image"].size == (8, 6) and train[2]["image"].getpixel((0, 0)) == (80, 80, 80)
    report = scan_source(source, build_label_spec(source, data_args), progress=False)
    (problem,) = report.problems
    assert problem.kind == "missing" and problem.file == "imgs/3.png"
    assert "relative path" in problem.found and str(elsewhere) in problem.found and "corrupt" not in str(problem)
