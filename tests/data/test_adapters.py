"""Every layout read from the real samples in ../shared/data: pair counts, shapes and label values."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Image as ImageFeature
from PIL import Image

from hfseg.config import DataArguments
from hfseg.data.adapters import build_label_spec, load_source, open_source
from hfseg.data.collate import collate_segmentation
from hfseg.data.preprocess import attach_transform, encode_pair
from hfseg.data.transforms import EvalTransform
from hfseg.errors import HfsegError
from hfseg.evaluation.metrics import StreamingSegmentationMetric


def layout(shared_data, folder, name, **flags):
    return DataArguments(data_dir=str(shared_data / folder), layout=name, **flags)


def labels_of(source, split, index, spec):
    row = source.dataset[split][index]
    return encode_pair(row["image"], row["annotation"], spec)[1]


def write_id2label(tmp_path, names):
    path = tmp_path / "id2label.json"
    path.write_text(json.dumps(dict(enumerate(names))))
    return str(path)


def test_ade20k_reduces_labels_once(shared_data):
    source = open_source(layout(shared_data, "ade20k", "ade20k"))
    assert {split: len(ds) for split, ds in source.dataset.items()} == {"validation": 2}
    assert source.reduce_labels is True and len(source.id2label) == 150
    row = source.dataset["validation"][0]
    assert row["image"].size == (683, 512) and row["annotation"].mode == "L"
    raw = np.asarray(row["annotation"]).astype(np.int64)
    labels = labels_of(source, "validation", 0, build_label_spec(source, DataArguments()))
    assert labels.shape == (512, 683)
    np.testing.assert_array_equal(labels, np.where(raw == 0, 255, raw - 1))
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 4, 6, 9, 17, 255]


def test_perfect_prediction_on_reduce_labels_data_scores_one(shared_data):
    """adapter -> label spec -> transform -> collate -> metric: the ground truth as prediction gives mIoU 1."""
    data_args = layout(shared_data, "ade20k", "ade20k")
    source = open_source(data_args)
    spec = build_label_spec(source, data_args)
    dataset = attach_transform(source.dataset["validation"], "image", "annotation", spec, EvalTransform(64))
    batch = collate_segmentation([dataset[0], dataset[1]], ignore_index=255)
    labels = batch["labels"]
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and labels.shape == (2, 512, 683)
    assert tuple(batch["label_sizes"][1].tolist()) == (364, 500)
    prediction = labels.clone()  # a perfect model's class map at the labels' resolution
    metric = StreamingSegmentationMetric(150, 255)
    metric.update(prediction, labels)
    result = metric.compute()
    assert result["mean_iou"] == 1.0
    assert np.isfinite(result["per_category_iou"]).sum() == 8  # the 8 classes present; raw 0 ignored
    # Reducing a second time (the classic bug) shifts every class and no longer scores 1.
    twice = torch.where(labels == 255, 255, labels - 1).clamp(min=0)
    again = StreamingSegmentationMetric(150, 255)
    again.update(prediction.clamp(max=149), twice)
    assert again.compute()["mean_iou"] < 0.5


def test_voc_palette_masks_keep_255_borders(shared_data):
    source = open_source(layout(shared_data, "voc2012", "voc"))
    assert {split: len(ds) for split, ds in source.dataset.items()} == {"val": 1}  # train.txt is empty
    assert source.id2label[20] == "tvmonitor" and len(source.id2label) == 21
    row = source.dataset["val"][0]
    assert row["annotation"].mode == "P" and row["image"].size == (500, 375)
    labels = labels_of(source, "val", 0, build_label_spec(source, DataArguments()))
    assert sorted(np.unique(labels).tolist()) == [0, 9, 12, 255]
    with pytest.raises(HfsegError, match="split 'train' not found"):
        load_source(layout(shared_data, "voc2012", "voc"))


def test_cityscapes_label_ids_map_to_train_ids(shared_data):
    by_ids = open_source(layout(shared_data, "cityscapes", "cityscapes"))
    as_given = open_source(layout(shared_data, "cityscapes", "cityscapes", cityscapes_mask="labelTrainIds"))
    assert len(by_ids.dataset["val"]) == len(as_given.dataset["val"]) == 1
    assert by_ids.dataset["val"][0]["annotation"].filename.endswith("_gtFine_labelIds.png")
    mapped = labels_of(by_ids, "val", 0, build_label_spec(by_ids, DataArguments()))
    given = labels_of(as_given, "val", 0, build_label_spec(as_given, DataArguments()))
    assert mapped.shape == (128, 256)
    # The sample's two masks were downscaled separately: they agree except on 77 boundary pixels.
    assert (mapped != given).sum() == 77
    raw = np.asarray(by_ids.dataset["val"][0]["annotation"])
    assert (mapped[raw == 26] == 13).all() and (mapped[raw == 1] == 255).all()  # car -> 13, ego vehicle -> ignore
    assert sorted(np.unique(mapped).tolist()) == [0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 255]
    with pytest.raises(HfsegError, match="--cityscapes_mask"):
        open_source(layout(shared_data, "cityscapes", "cityscapes", cityscapes_mask="color"))


def test_sixteen_bit_instance_ids_are_not_truncated(shared_data):
    from datasets import Dataset

    from hfseg.data.labels import decode_mask

    path = shared_data / "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_instanceIds.png"
    dataset = Dataset.from_dict({"mask": [str(path)]}).cast_column("mask", ImageFeature())
    values = decode_mask(dataset[0]["mask"])
    assert values.max() == 26002 and 24000 in values


def test_camvid_codes_and_void(shared_data):
    source = open_source(layout(shared_data, "camvid", "camvid"))
    assert len(source.dataset["train"]) == 3
    assert len(source.id2label) == 31 and source.id2label[30] == "Wall" and "Void" not in source.id2label.values()
    row = source.dataset["train"][0]
    raw = np.asarray(row["annotation"]).astype(np.int64)
    labels = labels_of(source, "train", 0, build_label_spec(source, DataArguments()))
    assert labels.shape == (720, 960)
    assert (labels[raw == 30] == 255).all() and (labels[raw == 17] == 17).all()  # Void ignored, Road kept
    assert labels.max() == 255 and labels[labels != 255].max() == 29


@pytest.mark.parametrize(
    ("folder", "pairs", "size", "names", "flags", "values"),
    [
        ("loveda", 2, (1024, 1024), 7, {"reduce_labels": True}, {0, 1, 2, 3, 5, 6}),
        ("potsdam", 1, (512, 512), 6, {}, {0, 1, 2, 3, 4, 5}),
        ("refuge", 1, (514, 531), 3, {}, {0, 1, 2}),
        ("synapse", 2, (512, 512), 9, {}, {0}),
    ],
)
def test_generic_folder_layouts(shared_data, tmp_path, folder, pairs, size, names, flags, values):
    data_args = layout(
        shared_data, folder, "folder", id2label_file=write_id2label(tmp_path, [f"c{i}" for i in range(names)]), **flags
    )
    source = open_source(data_args)
    assert len(source.dataset["train"]) == pairs and not source.problems
    spec = build_label_spec(source, data_args)
    found = set()
    for index in range(pairs):
        row = source.dataset["train"][index]
        assert row["image"].size == size
        labels = encode_pair(row["image"], row["annotation"], spec)[1]
        found |= set(np.unique(labels[labels != 255]).tolist())
    assert found == values
    if pairs > 1:
        split = load_source(data_args)
        assert len(split.dataset["train"]) + len(split.dataset["validation"]) == pairs


def test_generic_splits_suffixes_and_split_files(shared_data, tmp_path):
    data_args = layout(shared_data, "generic_splits", "folder", id2label_file=write_id2label(tmp_path, "abcd"))
    source = open_source(data_args)
    assert {split: len(ds) for split, ds in source.dataset.items()} == {"train": 4, "val": 1}
    val = source.dataset["val"][0]
    assert val["image"].filename.endswith("imgs/00004_img.jpg") and val["annotation"].filename.endswith("00004_gt.png")
    assert labels_of(source, "val", 0, build_label_spec(source, data_args)).max() == 3
    loaded = load_source(data_args)
    assert len(loaded.dataset["train"]) == 4 and len(loaded.dataset["validation"]) == 1


def test_bdd100k_masks_pair_cleanly_and_colormaps_do_not(shared_data):
    masks = open_source(
        layout(shared_data, "bdd100k", "folder", image_dir="images/10k", mask_dir="labels/sem_seg/masks")
    )
    assert {split: len(ds) for split, ds in masks.dataset.items()} == {"train": 3, "val": 3}
    assert masks.problems == [] and masks.dataset["train"][0]["image"].size == (8, 8)
    colormaps = open_source(
        layout(shared_data, "bdd100k", "folder", image_dir="images/10k", mask_dir="labels/sem_seg/colormaps")
    )
    assert len(colormaps.dataset["val"]) == 2
    unpaired = sorted(problem.file.rsplit("/", 1)[-1] for problem in colormaps.problems)
    assert unpaired == ["7d06fefd-f7be05a6.jpg", "7d2f7975-e0c1c5a7.png"]


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_pairs_file(shared_data, tmp_path, kind):
    root = shared_data / "generic_splits"
    rows = [
        (root / f"imgs/0000{i}_img.jpg", root / f"gts/0000{i}_gt.png", "train" if i < 3 else "val") for i in range(5)
    ]
    rows.append((tmp_path / "gone.jpg", root / "gts/00000_gt.png", "train"))
    if kind == "csv":
        path = tmp_path / "pairs.csv"
        path.write_text("image,mask,split\n" + "".join(f"{i},{m},{s}\n" for i, m, s in rows))
    else:
        path = tmp_path / "pairs.json"
        path.write_text(json.dumps([{"image": str(i), "mask": str(m), "split": s} for i, m, s in rows]))
    source = open_source(DataArguments(data_dir=str(tmp_path), layout="folder", pairs_file=path.name))
    assert {split: len(ds) for split, ds in source.dataset.items()} == {"train": 3, "val": 2}
    assert [problem.file for problem in source.problems] == [str(tmp_path / "gone.jpg")]


def make_pets(root, count=4):
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    trimap = np.full((24, 32), 2, dtype=np.uint8)
    trimap[6:18, 8:24] = 3
    trimap[8:16, 10:22] = 1
    for index in range(count):
        Image.new("RGB", (32, 24), (index * 40, 90, 120)).save(root / "images" / f"Abyssinian_{index}.jpg")
        Image.fromarray(trimap).save(root / "annotations" / "trimaps" / f"Abyssinian_{index}.png")
    (root / "annotations" / "trainval.txt").write_text("Abyssinian_0 1 1 1\nAbyssinian_1 1 1 1\nAbyssinian_2 1 1 1\n")
    (root / "annotations" / "test.txt").write_text("Abyssinian_3 1 1 1\nAbyssinian_9 1 1 1\n")
    return trimap


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [("binary", {1: 1, 2: 0, 3: 255}), ("border_as_pet", {1: 1, 2: 0, 3: 1}), ("three_class", {1: 1, 2: 0, 3: 2})],
)
def test_pets_trimaps(tmp_path, mapping, expected):
    trimap = make_pets(tmp_path)
    data_args = DataArguments(data_dir=str(tmp_path), layout="pets", trimap_mapping=mapping)
    source = open_source(data_args)
    assert {split: len(ds) for split, ds in source.dataset.items()} == {"train": 3, "test": 1}
    assert [problem.kind for problem in source.problems] == ["missing"]  # Abyssinian_9 listed, not on disk
    labels = labels_of(source, "test", 0, build_label_spec(source, data_args))
    for raw, final in expected.items():
        assert (labels[trimap == raw] == final).all()


def test_colormask_layout_decodes_colours(tmp_path):
    palette = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 255, 0)}
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    ids = np.zeros((16, 20), dtype=np.int64)
    ids[4:10, 3:12] = 1
    ids[10:, 12:] = 2
    colours = np.array([palette[i] for i in range(3)], dtype=np.uint8)[ids]
    for name in ("a", "b"):
        Image.new("RGB", (20, 16), (50, 60, 70)).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray(colours).save(tmp_path / "masks" / f"{name}.png")
    palette_file = tmp_path / "palette.txt"
    palette_file.write_text("0 0 0 background\n255 0 0 roof\n0 255 0 tree\n")
    data_args = DataArguments(data_dir=str(tmp_path), layout="colormask", palette_file=str(palette_file))
    source = open_source(data_args)
    assert source.id2label == {0: "background", 1: "roof", 2: "tree"} and len(source.dataset["train"]) == 2
    np.testing.assert_array_equal(labels_of(source, "train", 1, build_label_spec(source, data_args)), ids)
    with pytest.raises(HfsegError, match="needs --palette_file"):
        open_source(DataArguments(data_dir=str(tmp_path), layout="colormask"))
    no_palette = DataArguments(data_dir=str(tmp_path), layout="folder", id2label_file=write_id2label(tmp_path, "abc"))
    source = open_source(no_palette)
    with pytest.raises(HfsegError, match="a.png: a colour-coded RGB mask.*--palette_file"):
        labels_of(source, "train", 0, build_label_spec(source, no_palette))


def test_label_map_flag_replaces_layout_table(shared_data):
    data_args = layout(shared_data, "cityscapes", "cityscapes", cityscapes_mask="labelTrainIds", label_map='{"13": 0}')
    source = open_source(data_args)
    given = np.asarray(source.dataset["val"][0]["annotation"])
    labels = labels_of(source, "val", 0, build_label_spec(source, data_args))
    assert 13 not in labels and (labels == 0).sum() == (given == 0).sum() + (given == 13).sum()  # cars became road


def test_layout_errors(tmp_path):
    with pytest.raises(HfsegError, match="unknown layout"):
        open_source(DataArguments(data_dir=str(tmp_path), layout="kitti"))
    with pytest.raises(HfsegError, match="no images folder found"):
        open_source(DataArguments(data_dir=str(tmp_path), layout="folder"))
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(HfsegError, match="no image/mask pairs found"):
        open_source(DataArguments(data_dir=str(tmp_path), layout="folder"))
    with pytest.raises(HfsegError, match="needs --layout"):
        open_source(DataArguments(data_dir=str(tmp_path)))


def test_folder_images_in_any_mode_with_exif_and_a_shared_folder(tmp_path):
    """Grayscale, RGBA, palette, CMYK and EXIF-rotated images all arrive as upright RGB matching their masks;
    images and masks may share a folder (`<stem>.jpg` + `<stem>_mask.png`)."""
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[:, 16:] = 1
    images = {
        "grey": Image.new("L", (32, 24), 90),
        "rgba": Image.new("RGBA", (32, 24), (10, 20, 30, 0)),
        "palette": Image.new("P", (32, 24), 3),
        "cmyk": Image.new("CMYK", (32, 24), (0, 255, 255, 0)),
    }
    for name, image in images.items():
        image.save(tmp_path / f"{name}.{'jpg' if name == 'cmyk' else 'png'}")
        Image.fromarray(mask).save(tmp_path / f"{name}_mask.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 24x32, shown rotated to 32x24: the mask is drawn on the upright image
    Image.new("RGB", (24, 32), (200, 0, 0)).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    Image.fromarray(mask).save(tmp_path / "rotated_mask.png")
    data_args = DataArguments(
        data_dir=str(tmp_path),
        layout="folder",
        image_dir=".",
        mask_dir=".",
        id2label_file=write_id2label(tmp_path, "ab"),
    )
    source = open_source(data_args)
    assert source.problems == [] and len(source.dataset["train"]) == 5
    spec = build_label_spec(source, data_args)
    for index in range(5):
        row = source.dataset["train"][index]
        rgb, labels = encode_pair(row["image"], row["annotation"], spec)
        assert rgb.mode == "RGB" and rgb.size == (32, 24) and labels.shape == (24, 32)
        np.testing.assert_array_equal(labels, mask)
    paths = source.dataset["train"].cast_column("image", ImageFeature(decode=False))["image"]
    assert [Path(item["path"]).name for item in paths] == [
        "cmyk.jpg",
        "grey.png",
        "palette.png",
        "rgba.png",
        "rotated.jpg",
    ]
    cmyk = source.dataset["train"][0]
    assert encode_pair(cmyk["image"], cmyk["annotation"], spec)[0].getpixel((0, 0))[0] > 200  # CMYK red -> RGB red


def test_voc_augmented_set_and_missing_files(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    mask = np.full((8, 10), 15, dtype=np.uint8)
    mask[0] = 255
    for stem in ("2008_000001", "2008_000002", "2008_000003"):
        Image.new("RGB", (10, 8)).save(root / "JPEGImages" / f"{stem}.jpg")
        Image.fromarray(mask).save(root / "SegmentationClassAug" / f"{stem}.png")
    Image.fromarray(mask).save(root / "SegmentationClass" / "2008_000003.png")
    lists = root / "ImageSets" / "Segmentation"
    (lists / "train_aug.txt").write_text("2008_000001\n2008_000002\n2008_000009\n")
    (lists / "val.txt").write_text("2008_000003\n")
    data_args = DataArguments(data_dir=str(tmp_path), layout="voc", voc_augmented=True)
    source = open_source(data_args)
    assert {split: len(ds) for split, ds in source.dataset.items()} == {"train": 2, "val": 1}
    assert sorted(Path(problem.file).name for problem in source.problems) == ["2008_000009.jpg", "2008_000009.png"]
    labels = labels_of(source, "train", 1, build_label_spec(source, data_args))
    assert sorted(np.unique(labels).tolist()) == [15, 255]
    with pytest.raises(HfsegError, match="SegmentationClassAug not found"):
        (root / "SegmentationClassAug" / "2008_000001.png").unlink()
        for file in (root / "SegmentationClassAug").iterdir():
            file.unlink()
        (root / "SegmentationClassAug").rmdir()
        open_source(data_args)


def write_tiny_pair(image_path, mask_path, value=1):
    image_path.parent.mkdir(parents=True, exist_ok=True)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(image_path)
    Image.fromarray(np.full((6, 8), value, dtype=np.uint8)).save(mask_path)


@pytest.mark.parametrize(
    ("image_pattern", "mask_pattern"),
    [
        ("{split}_images/{name}.jpg", "{split}_segmentations/{name}.png"),  # LIP
        ("images/{split}/{name}.jpg", "annotations/{split}/{name}.png"),
        ("images/{split}/{name}.jpg", "masks/{split}/{name}.png"),
        ("{split}/image/{name}.png", "{split}/label/{name}.png"),  # ISBI EM (unet)
    ],
)
def test_folder_detects_split_layouts(tmp_path, image_pattern, mask_pattern):
    for split, count in (("train", 3), ("val", 2)):
        for index in range(count):
            names = {"split": split, "name": f"{split}{index}"}
            write_tiny_pair(tmp_path / image_pattern.format(**names), tmp_path / mask_pattern.format(**names))
    source = open_source(
        DataArguments(data_dir=str(tmp_path), layout="folder", id2label_file=write_id2label(tmp_path, "ab"))
    )
    assert {split: len(ds) for split, ds in source.dataset.items()} == {"train": 3, "val": 2}
    assert source.problems == []
    assert Path(source.dataset["val"][1]["image"].filename).stem == "val1"


def test_isbi_em_sample_is_found_without_folder_flags(shared_data, tmp_path):
    source = open_source(
        DataArguments(
            data_dir=str(shared_data / "isbi_em"),
            layout="folder",
            id2label_file=write_id2label(tmp_path, ["membrane", "cell"]),
        )
    )
    assert len(source.dataset["train"]) == 4 and source.problems == []


def test_undetected_layout_names_pairs_file(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(HfsegError, match="--image_dir.*--pairs_file"):
        open_source(DataArguments(data_dir=str(tmp_path), layout="folder"))


def test_pairs_file_relative_to_current_folder_first(shared_data, tmp_path, monkeypatch):
    root = shared_data / "generic_splits"
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "pairs.csv").write_text(
        "image,mask\n" + "".join(f"{root}/imgs/0000{i}_img.jpg,{root}/gts/0000{i}_gt.png\n" for i in range(2))
    )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "pairs.csv").write_text(f"image,mask\n{root}/imgs/00004_img.jpg,{root}/gts/00004_gt.png\n")
    monkeypatch.chdir(tmp_path / "lists")
    in_cwd = open_source(DataArguments(data_dir=str(tmp_path / "data"), layout="folder", pairs_file="pairs.csv"))
    assert len(in_cwd.dataset["train"]) == 2
    monkeypatch.chdir(tmp_path)
    in_data_dir = open_source(DataArguments(data_dir=str(tmp_path / "data"), layout="folder", pairs_file="pairs.csv"))
    assert len(in_data_dir.dataset["train"]) == 1
    with pytest.raises(HfsegError, match="--pairs_file nope.csv: no such file in the current folder nor in"):
        open_source(DataArguments(data_dir=str(tmp_path / "data"), layout="folder", pairs_file="nope.csv"))


def test_split_sizes_are_logged_and_a_held_out_part_said(shared_data, tmp_path, caplog):
    caplog.set_level("INFO", logger="hfseg")
    names = write_id2label(tmp_path, [f"c{i}" for i in range(7)])
    load_source(
        DataArguments(
            data_dir=str(shared_data / "loveda"), layout="folder", id2label_file=names, validation_fraction=0.5
        )
    )
    assert "train: 1 pairs from split 'train' less the held-out part" in caplog.text
    assert "validation: 1 pairs from the part held out from split 'train' (--validation_fraction 0.5" in caplog.text
    caplog.clear()
    load_source(
        layout(
            shared_data,
            "generic_splits",
            "folder",
            id2label_file=write_id2label(tmp_path, "abcd"),
            max_train_samples=2,
        )
    )
    assert "train: 2 pairs (capped from 4) from split 'train'" in caplog.text
    assert "validation: 1 pairs from split 'val'" in caplog.text and "held out" not in caplog.text
