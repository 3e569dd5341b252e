"""`hfseg doctor` finds each kind of planted problem; training stops on them or skips them when asked."""

import io
import json

import numpy as np
import pytest
from conftest import TINY_SEGFORMER
from PIL import Image

from hfseg.config import DataArguments
from hfseg.data.adapters import build_label_spec, load_source, open_source
from hfseg.data.doctor import check_source, main, scan_source
from hfseg.errors import HfsegError


def save_pair(root, name, mask, size=(32, 24), image_ext="png"):
    rng = np.random.default_rng(len(name))
    pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / f"{name}.{image_ext}")
    if mask is not None:
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")


@pytest.fixture
def planted(tmp_path):
    """A folder data set with 6 good pairs and one of each problem kind."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    good = np.zeros((24, 32), dtype=np.uint8)
    good[:, 16:] = 1
    good[:4] = 2
    for index in range(6):
        save_pair(tmp_path, f"good{index}", good)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (tmp_path / "images" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    Image.fromarray(good).save(tmp_path / "masks" / "truncated.png")
    save_pair(tmp_path, "smaller", good[:20, :30])
    save_pair(tmp_path, "outside", np.full((24, 32), 9, dtype=np.uint8))
    save_pair(tmp_path, "colours", np.stack([good * 100, good * 50, good], axis=-1))
    save_pair(tmp_path, "lonely_image", None)
    Image.fromarray(good).save(tmp_path / "masks" / "lonely_mask.png")
    (tmp_path / "images" / "notanimage.png").write_bytes(b"this is not a png")
    Image.fromarray(good).save(tmp_path / "masks" / "notanimage.png")
    (tmp_path / "id2label.json").write_text(json.dumps({"0": "background", "1": "road", "2": "sky"}))
    return tmp_path


EXPECTED = {
    "truncated.jpg": ("corrupt", "cannot be read", "--skip_bad_samples"),
    "notanimage.png": ("corrupt", "cannot be read", "re-export"),
    "smaller.png": ("size_mismatch", "mask is 30x20 but its image", "pixel for pixel"),
    "outside.png": ("label_values", "has label values [9]", "--label_map"),
    "colours.png": ("colour_mask", "colour-coded RGB mask", "--palette_file"),
    "lonely_image.png": ("unpaired", "image has no mask", "--mask_dir"),
    "lonely_mask.png": ("unpaired", "mask has no image", "--image_dir"),
}


def test_doctor_finds_every_planted_problem(planted, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data_dir", str(planted), "--layout", "folder", "--no_progress"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "pairs: train 11" in out and "image sizes: all 32x24 (W x H)" in out
    assert "problems: 7" in out
    lines = [line for line in out.splitlines() if line.startswith("  [")]
    for file, (kind, found, fix) in EXPECTED.items():
        matching = [line for line in lines if f"/{file}:" in line]
        assert len(matching) == 1, (file, lines)
        assert matching[0].startswith(f"  [{kind}]") and found in matching[0] and fix in matching[0], matching[0]
    # Pixels are counted over the 6 good pairs only.
    rows = [line.split() for line in out.splitlines() if line.startswith("     ") and line.split()[0].isdigit()]
    counts = {row[1]: int(row[2]) for row in rows}
    assert counts == {"background": 6 * 20 * 16, "road": 6 * 20 * 16, "sky": 6 * 4 * 32}


def test_doctor_reports_real_image_sizes_not_mixed_axes(tmp_path, capsys):
    """Wide 100x10 and tall 10x100 images: a per-axis range would show 10x10 .. 100x100, sizes no image has."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, size in (("wide", (100, 10)), ("tall", (10, 100)), ("square0", (40, 40)), ("square1", (40, 40))):
        save_pair(tmp_path, name, np.zeros(size[::-1], dtype=np.uint8), size=size)
    (tmp_path / "id2label.json").write_text(json.dumps({"0": "background"}))
    with pytest.raises(SystemExit) as exit_info:
        main(["--data_dir", str(tmp_path), "--layout", "folder", "--no_progress"])
    assert exit_info.value.code == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("image sizes:"))
    assert line == (
        "image sizes: smallest 10x100, largest 40x40, most common 40x40 (2 of 4); 3 distinct sizes (W x H)"
    ), line


def test_doctor_clean_source_and_plot(shared_data, tmp_path, capsys):
    plot = tmp_path / "chart.png"
    from hfseg.cli import main as hfseg

    with pytest.raises(SystemExit) as exit_info:  # through the console script's dispatcher
        hfseg(["doctor", "--data_dir", str(shared_data / "camvid"), "--layout", "camvid", "--plot", str(plot)])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "pairs: train 3" in out and "problems: none" in out and "Road" in out
    assert Image.open(plot).size[0] > 300


def test_doctor_finds_bdd100k_pairing_fault(shared_data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--data_dir", str(shared_data / "bdd100k"), "--layout", "folder", "--image_dir", "images/10k",
                "--mask_dir", "labels/sem_seg/colormaps", "--no_progress",
            ]
        )  # fmt: skip
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "7d06fefd-f7be05a6.jpg: image has no mask" in out
    assert "7d2f7975-e0c1c5a7.png: mask has no image" in out
    assert "[no_id2label]" in out and "[35, 70, 107, 142]" in out  # grey-converted colour maps, not train ids


def test_doctor_one_based_masks_suggest_reduce_labels(shared_data, tmp_path, capsys):
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["background", "building", "road", "water", "barren", "forest", "agriculture"]))
    argv = ["--data_dir", str(shared_data / "loveda"), "--layout", "folder", "--id2label_file", str(names)]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--no_progress"])
    assert exit_info.value.code == 1
    problem = next(line for line in capsys.readouterr().out.splitlines() if "[label_values]" in line)
    assert "ann_dir/0.png: has label values [7] (raw [7])" in problem and "set --reduce_labels" in problem
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--reduce_labels", "true", "--no_progress"])
    assert exit_info.value.code == 0


def test_unknown_palette_colour_is_a_problem(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    colours = np.zeros((24, 32, 3), dtype=np.uint8)
    colours[5:9, 5:9] = (10, 20, 30)
    save_pair(tmp_path, "tile", colours)
    (tmp_path / "palette.json").write_text(json.dumps({"0": [0, 0, 0], "1": [255, 0, 0]}))
    data_args = DataArguments(
        data_dir=str(tmp_path), layout="colormask", palette_file=str(tmp_path / "palette.json"),
        id2label_file=None,
    )  # fmt: skip
    (tmp_path / "id2label.json").write_text(json.dumps({"0": "ground", "1": "roof"}))
    source = open_source(data_args)
    report = scan_source(source, build_label_spec(source, data_args), progress=False)
    assert [problem.kind for problem in report.problems] == ["unknown_colour"]
    assert "(10, 20, 30)" in report.problems[0].found and "--palette_file" in report.problems[0].fix


def test_training_check_stops_or_skips(planted, caplog):
    data_args = DataArguments(data_dir=str(planted), layout="folder", validation_fraction=0.3)
    source = load_source(data_args)
    spec = build_label_spec(source, data_args)
    with pytest.raises(HfsegError, match=r"found 7 problem\(s\) before training") as error:
        check_source(source, spec, data_args)
    assert "truncated.jpg" in str(error.value) and "--skip_bad_samples" in str(error.value)
    data_args.skip_bad_samples = True
    with caplog.at_level("WARNING"):
        check_source(source, spec, data_args)
    assert len(source.dataset["train"]) + len(source.dataset["validation"]) == 6
    assert "skipping 5 pair(s) (7 problem(s))" in caplog.text and "outside.png" in caplog.text
    assert check_source(source, spec, data_args) is None  # what is left is clean


def test_check_samples_limits_the_scan(planted):
    data_args = DataArguments(data_dir=str(planted), layout="folder", check_samples=0)
    source = open_source(data_args)
    report = scan_source(source, build_label_spec(source, data_args), max_samples=0, progress=False)
    assert report.scanned == {"train": 0} and {problem.kind for problem in report.problems} == {"unpaired"}


@pytest.mark.slow
def test_finetune_stops_before_training_and_skips_when_asked(planted, tmp_path, capsys):
    from hfseg.finetune import main as finetune

    argv = [
        "--model_type", "segformer", "--config_overrides", json.dumps(TINY_SEGFORMER), "--image_size", "32",
        "--crop_size", "32", "--data_dir", str(planted), "--layout", "folder", "--validation_fraction", "0.3",
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--save_strategy", "no",
        "--num_preview_images", "1", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        finetune(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "before training" in err and "colours.png" in err
    assert not (tmp_path / "out").exists()
    metrics = finetune([*argv, "--skip_bad_samples"])
    assert 0.0 <= metrics["eval_overall_accuracy"] <= 1.0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["id2label"] == {
        "0": "background",
        "1": "road",
        "2": "sky",
    }


@pytest.mark.parametrize("name", ["smaller", "outside", "colours"])
def test_training_error_and_doctor_problem_say_the_same(planted, name):
    """The doctor and training describe one bad mask with one `MaskError`: same kind, file, finding and fix."""
    from hfseg.data.doctor import inspect_pair
    from hfseg.data.labels import MaskError
    from hfseg.data.preprocess import encode_pair

    data_args = DataArguments(data_dir=str(planted), layout="folder", id2label_file=str(planted / "id2label.json"))
    spec = build_label_spec(open_source(data_args), data_args)
    image_path, mask_path = str(planted / "images" / f"{name}.png"), str(planted / "masks" / f"{name}.png")
    _, _, _, problems = inspect_pair(image_path, mask_path, spec, row="row 0")
    (problem,) = problems
    with pytest.raises(MaskError) as raised:
        encode_pair(Image.open(image_path), Image.open(mask_path), spec)
    assert raised.value.kind == problem.kind == EXPECTED[f"{name}.png"][0]
    if name != "outside":  # the doctor adds the raw values before mapping
        assert str(raised.value) == str(problem)
    assert raised.value.source == problem.file == mask_path


def test_negative_mask_values_are_a_problem_not_wrapped_around(tmp_path):
    """A 32-bit mask with a negative value is reported, as training reports it (not read from the table's end)."""
    from hfseg.data.doctor import inspect_pair
    from hfseg.data.labels import LabelSpec

    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    Image.fromarray(np.array([[0, 1, -1, 0, 0]] * 4, dtype=np.int32), mode="I").save(tmp_path / "mask.tif")
    spec = LabelSpec({0: "bg", 1: "a"})
    _, labels, _, problems = inspect_pair(str(tmp_path / "image.png"), str(tmp_path / "mask.tif"), spec, "row 0")
    assert labels is None and [problem.kind for problem in problems] == ["label_values"]
    assert "negative mask values -1" in problems[0].found


def two_value_folder(root, train_masks, validation_masks, id2label):
    """A folder data set with `splits/` files: one 32x24 pair per given mask."""
    for folder in ("images", "masks", "splits"):
        (root / folder).mkdir()
    for split, masks in (("train", train_masks), ("val", validation_masks)):
        names = [f"{split}{index}" for index in range(len(masks))]
        for name, mask in zip(names, masks, strict=True):
            save_pair(root, name, mask.astype(np.uint8))
        (root / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (root / "id2label.json").write_text(json.dumps(id2label))
    return root


def em_masks(count, cell_share=0.75):
    """EM-style masks: 0 = membrane, 255 = cell (a class, not ignore)."""
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[:, : int(32 * cell_share)] = 255
    return [mask] * count


def doctor_exit(root, *flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data_dir", str(root), "--layout", "folder", "--no_progress", *flags])
    return exit_info.value.code, capsys.readouterr().out


def test_class_value_read_as_ignore_is_a_problem_with_the_label_map_fix(tmp_path, capsys):
    root = two_value_folder(tmp_path, em_masks(3), em_masks(2), {"0": "membrane", "1": "cell"})
    code, out = doctor_exit(root, capsys=capsys)
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("  [ignore_share]")]
    assert [line.split()[1] for line in problems] == ["train", "val"]
    assert "75.0% of the pixels are ignore_index=255 (raw value(s) [255])" in problems[0]
    assert "'cell' (1) have no pixels" in problems[0]
    assert """set --label_map '{"0": 0, "255": 1}'""" in problems[0] and "--allow_high_ignore" in problems[0]
    code, out = doctor_exit(root, "--label_map", '{"0": 0, "255": 1}', capsys=capsys)
    assert code == 0 and "problems: none" in out
    code, out = doctor_exit(root, "--allow_high_ignore", "true", capsys=capsys)
    assert code == 0 and "problems: none" in out


def test_shared_em_set_gets_the_label_map_fix(shared_data, tmp_path, capsys):
    names = tmp_path / "id2label.json"
    names.write_text(json.dumps({"0": "membrane", "1": "cell"}))
    em = ["--data_dir", str(shared_data / "isbi_em"), "--image_dir", "train/image", "--mask_dir", "train/label"]
    with pytest.raises(SystemExit) as exit_info:
        main([*em, "--layout", "folder", "--id2label_file", str(names), "--no_progress", "--max_samples", "1"])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "[ignore_share] train split:" in out and """--label_map '{"0": 0, "255": 1}'""" in out


@pytest.mark.parametrize(
    ("ignored_rows", "absent_class", "problem"),
    [
        (2, True, False),  # 8% ignore borders (VOC) with a class missing from the split: fine
        (7, False, False),  # 29% ignore, every class present: fine
        (7, True, True),  # 29% ignore and a named class without pixels: a class read as ignore
        (15, False, True),  # 62% ignore: too much in any case
    ],
)
def test_ignore_share_thresholds(tmp_path, capsys, ignored_rows, absent_class, problem):
    mask = np.zeros((24, 32), dtype=np.uint8)
    mask[:, 16:] = 1
    mask[:, 24:] = 0 if absent_class else 2
    mask[:ignored_rows] = 255
    root = two_value_folder(tmp_path, [mask] * 2, [mask], {"0": "background", "1": "road", "2": "sky"})
    code, out = doctor_exit(root, capsys=capsys)
    assert (code, "[ignore_share]" in out) == ((1, True) if problem else (0, False)), out
    code, _ = doctor_exit(root, "--allow_high_ignore", "true", capsys=capsys)
    assert code == 0


def test_all_ignore_split_is_a_problem_even_when_high_ignore_is_allowed(tmp_path, capsys):
    labelled = np.zeros((24, 32), dtype=np.uint8)
    labelled[:, 16:] = 1
    root = two_value_folder(tmp_path, [labelled] * 2, [np.full((24, 32), 255)], {"0": "a", "1": "b"})
    code, out = doctor_exit(root, "--allow_high_ignore", "true", capsys=capsys)
    assert code == 1
    problem = next(line for line in out.splitlines() if line.startswith("  [no_labelled_pixels]"))
    assert "val split: no labelled pixel: every checked mask pixel is ignore_index=255" in problem
    assert "re-export these masks" in problem and "--label_map" not in problem


def test_training_check_stops_on_a_class_read_as_ignore_even_with_skip_bad_samples(tmp_path):
    root = two_value_folder(tmp_path, em_masks(3), em_masks(2), {"0": "membrane", "1": "cell"})
    data_args = DataArguments(data_dir=str(root), layout="folder", skip_bad_samples=True)
    source = load_source(data_args)
    with pytest.raises(HfsegError, match=r"""train split: .*--label_map '\{"0": 0, "255": 1\}'"""):
        check_source(source, build_label_spec(source, data_args), data_args)
    allowed = DataArguments(data_dir=str(root), layout="folder", allow_high_ignore=True)
    check_source(source, build_label_spec(source, allowed), allowed)  # the user says 255 really is ignore


def test_all_ignore_validation_split_stops_training(tmp_path):
    labelled = np.zeros((24, 32), dtype=np.uint8)
    labelled[:, 16:] = 1
    root = two_value_folder(tmp_path, [labelled] * 2, [np.full((24, 32), 255)], {"0": "a", "1": "b"})
    data_args = DataArguments(data_dir=str(root), layout="folder", allow_high_ignore=True)
    source = load_source(data_args)
    with pytest.raises(HfsegError, match="validation split: no labelled pixel"):
        check_source(source, build_label_spec(source, data_args), data_args)


def test_reduce_labels_on_zero_based_masks_suggests_turning_it_off(tmp_path, capsys):
    mask = np.zeros((24, 32), dtype=np.uint8)  # 0 = background, a class, over half the pixels
    mask[:, 20:] = 1
    root = two_value_folder(tmp_path, [mask] * 2, [mask], {"0": "background", "1": "road"})
    code, out = doctor_exit(root, "--reduce_labels", "true", capsys=capsys)
    assert code == 1
    problem = next(line for line in out.splitlines() if line.startswith("  [ignore_share] train split"))
    assert "62.5% of the pixels are ignore_index=255 (raw value(s) [0])" in problem
    assert "--reduce_labels false" in problem


def test_doctor_stats_prints_numpy_mean_and_std_of_the_train_images(tmp_path, capsys):
    import re

    import tifffile
    from conftest import write_multiband_folder

    root = write_multiband_folder(tmp_path / "multiband")
    flags = ["--data_dir", str(root), "--layout", "folder", "--id2label_file", str(root / "id2label.json")]
    with pytest.raises(SystemExit) as exit_info:
        main([*flags, "--stats", "--no_progress"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    stacked = np.stack([tifffile.imread(path) for path in sorted((root / "images" / "train").glob("*.tif"))])
    stacked = stacked.astype(np.float64) / 65535  # 16-bit images in [0, 1] units
    mean = [float(v) for v in re.search(r"^image_mean: \[(.*)\]$", out, re.M).group(1).split(", ")]
    std = [float(v) for v in re.search(r"^image_std: \[(.*)\]$", out, re.M).group(1).split(", ")]
    np.testing.assert_allclose(mean, stacked.mean(axis=(0, 1, 2)), rtol=1e-5)  # printed with 6 digits
    np.testing.assert_allclose(std, stacked.std(axis=(0, 1, 2)), rtol=1e-5)
    assert re.search(r"^num_channels: 4$", out, re.M) and "of the train split (4 images" in out


def test_doctor_stats_of_16bit_rgb_pngs_are_on_the_training_scale(tmp_path, capsys):
    import re

    from conftest import png16_bytes

    rng = np.random.default_rng(0)
    stored = {"train": [], "val": []}
    for split, count in (("train", 3), ("val", 1)):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "masks" / split).mkdir(parents=True)
        for index in range(count):
            rgb = rng.integers(0, 4096, (16, 20, 3), dtype=np.uint16) + np.array([0, 1000, 3000], dtype=np.uint16)
            (tmp_path / "images" / split / f"{index}.png").write_bytes(png16_bytes(rgb))
            Image.fromarray(np.zeros((16, 20), dtype=np.uint8)).save(tmp_path / "masks" / split / f"{index}.png")
            stored[split].append(rgb)
    (tmp_path / "id2label.json").write_text(json.dumps({"0": "background"}))
    flags = ["--data_dir", str(tmp_path), "--layout", "folder", "--id2label_file", str(tmp_path / "id2label.json")]
    with pytest.raises(SystemExit):
        main([*flags, "--stats", "--no_progress"])
    out = capsys.readouterr().out
    train = np.stack(stored["train"]).astype(np.float64) / 65535  # training's scale: 16-bit / 65535, not 8 bits
    mean = [float(v) for v in re.search(r"^image_mean: \[(.*)\]$", out, re.M).group(1).split(", ")]
    std = [float(v) for v in re.search(r"^image_std: \[(.*)\]$", out, re.M).group(1).split(", ")]
    np.testing.assert_allclose(mean, train.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, train.std(axis=(0, 1, 2)), rtol=1e-5)
    assert re.search(r"^num_channels: 3$", out, re.M)
