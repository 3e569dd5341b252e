"""`hfseg predict`: palette index masks at the original size for any image mode, overlays, nothing skipped
silently."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from hfseg.data.labels import LabelSpec
from hfseg.evaluation.inference import InferenceOptions, eval_transform_for, predict_masks
from hfseg.evaluation.predict import list_inputs, read_image
from hfseg.evaluation.predict import main as predict_main
from hfseg.evaluation.visualize import make_palette


def _random(height, width, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 255, size=shape, dtype=np.uint8)


@pytest.fixture
def image_folder(tmp_path):
    """Images in every mode a user may have, in nested folders, plus a file that is not an image."""
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(_random(50, 70)).save(folder / "rgb.jpg")
    Image.fromarray(_random(60, 40, 4, seed=1), mode="RGBA").save(folder / "nested" / "rgba.png")
    Image.fromarray(_random(47, 33, 1, seed=2), mode="L").save(folder / "gray.png")
    deep = np.random.default_rng(3).integers(0, 60000, size=(40, 45), dtype=np.uint16)
    Image.fromarray(deep).save(folder / "deep16.png")
    Image.fromarray(_random(52, 52, seed=4)).convert("CMYK").save(folder / "cmyk.jpg")
    palette_image = Image.fromarray(_random(36, 64, 1, seed=5) % 4, mode="P")
    palette_image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette_image.save(folder / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: stored 60x40, shown 40x60
    Image.fromarray(_random(40, 60, seed=6)).save(folder / "rotated.jpg", exif=exif)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_writes_palette_masks_at_original_size(saved_tiny_model, image_folder, tmp_path, caplog):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    output = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="hfseg"):
        written = predict_main(["--model", str(saved_tiny_model), "--input", str(image_folder),
                                "--output", str(output), "--batch_size", "3"])  # fmt: skip
    assert "1 files are not images" in caplog.text and "notes.txt" in caplog.text
    images, others = list_inputs(image_folder, output)
    assert [path.name for path in others] == ["notes.txt"]
    assert len(written) == len(images) == 7
    model = AutoModelForSemanticSegmentation.from_pretrained(saved_tiny_model).eval()
    transform = eval_transform_for(AutoImageProcessor.from_pretrained(saved_tiny_model), InferenceOptions())
    decoded = [read_image(path) for path in images]
    expected = predict_masks(model, decoded, transform, batch_size=3)
    palette = make_palette(5)
    for path, image, prediction in zip(images, decoded, expected, strict=True):
        relative = path.relative_to(image_folder).with_suffix(".png")
        size = image.size if isinstance(image, Image.Image) else (image.shape[-1], image.shape[-2])  # 16-bit: tensor
        mask = Image.open(output / relative)
        assert mask.mode == "P" and mask.size == size, relative
        assert np.array_equal(np.asarray(mask), prediction.numpy()), f"{relative}: pixel value = class id"
        assert np.array_equal(np.array(mask.getpalette()[:15]).reshape(5, 3), palette)
        assert Image.open(output / "overlays" / relative).size == size
    assert Image.open(output / "rotated.png").size == (40, 60), "EXIF orientation is applied"
    assert (output / "nested" / "rgba.png").is_file()


def test_predict_slide_tta_on_shared_ade20k_images(saved_tiny_model, shared_data, tmp_path):
    folder = shared_data / "ade20k" / "ADEChallengeData2016" / "images" / "validation"
    predict_main(["--model", str(saved_tiny_model), "--input", str(folder), "--output", str(tmp_path),
                  "--eval_mode", "slide", "--eval_crop_size", "48", "--eval_flip", "--no_overlays"])  # fmt: skip
    for path in sorted(folder.glob("*.jpg")):
        mask = Image.open(tmp_path / f"{path.stem}.png")
        assert mask.size == Image.open(path).size
        assert np.asarray(mask).max() < 5
    assert not (tmp_path / "overlays").exists()


def test_16bit_images_are_read_and_scaled_as_training_reads_them(saved_tiny_model, tmp_path):
    import tifffile
    from conftest import png16_bytes
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    from hfseg.data.preprocess import decode_rgb
    from hfseg.data.transforms import EvalTransform

    rng = np.random.default_rng(8)
    gray = rng.integers(0, 4096, (40, 45), dtype=np.uint16)  # a 12-bit sensor: values up to 4095 / 65535
    rgb = rng.integers(0, 65536, (40, 45, 3), dtype=np.uint16)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(gray).save(folder / "gray16.png")
    (folder / "rgb16.png").write_bytes(png16_bytes(rgb))
    tifffile.imwrite(folder / "rgb16_tiff.tif", rgb, photometric="rgb")
    processor = AutoImageProcessor.from_pretrained(saved_tiny_model)
    mean, std = np.array(processor.image_mean)[:, None, None], np.array(processor.image_std)[:, None, None]
    paths = sorted(folder.iterdir())
    for path in paths:
        image = read_image(path)
        assert torch.equal(image, decode_rgb({"bytes": None, "path": str(path)})), path.name  # training's pixels
        values = (np.stack([gray] * 3) if path.name == "gray16.png" else rgb.transpose(2, 0, 1)) / 65535
        pixel_values = EvalTransform(None, processor.image_mean, processor.image_std)(image, None)[0]
        np.testing.assert_allclose(pixel_values.numpy(), (values - mean) / std, atol=1e-5, err_msg=path.name)
    written = predict_main(
        ["--model", str(saved_tiny_model), "--input", str(folder), "--output", str(tmp_path / "out")]
    )
    model = AutoModelForSemanticSegmentation.from_pretrained(saved_tiny_model).eval()
    transform = eval_transform_for(processor, InferenceOptions().with_input_size(64))
    expected = predict_masks(model, [decode_rgb({"bytes": None, "path": str(path)}) for path in paths], transform)
    for mask_path, prediction in zip(written, expected, strict=True):
        assert np.array_equal(np.asarray(Image.open(mask_path)), prediction.numpy()), mask_path.name


def test_unreadable_image_is_named_after_the_others_are_written(saved_tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_random(40, 40)).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--model", str(saved_tiny_model), "--input", str(folder), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "1 of 2 images could not be read" in error and "broken.png" in error
    assert (tmp_path / "out" / "good.png").is_file()


def png_claiming_size(path, width: int, height: int) -> None:
    """A small valid PNG whose header claims `width` x `height` (Pillow checks the size before decoding)."""
    import struct
    import zlib

    Image.fromarray(_random(8, 8)).save(path)
    data = bytearray(path.read_bytes())
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])  # depth, colour type, ...
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    path.write_bytes(bytes(data))


def test_decompression_bomb_is_named_and_the_rest_of_its_batch_is_written(saved_tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_random(40, 40)).save(folder / "a_good.png")
    png_claiming_size(folder / "b_huge.png", 20000, 20000)
    Image.fromarray(_random(30, 50, seed=1)).save(folder / "c_good.png")
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--model", str(saved_tiny_model), "--input", str(folder), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    lines = [line for line in error.splitlines() if line.startswith("hfseg: error:")]
    assert len(lines) == 1 and "1 of 3 images could not be read" in lines[0], error
    assert "b_huge.png: too large to decode" in lines[0] and "400000000 pixels" in lines[0]
    assert (tmp_path / "out" / "a_good.png").is_file() and (tmp_path / "out" / "c_good.png").is_file()
    assert not (tmp_path / "out" / "b_huge.png").exists()


def test_two_inputs_with_one_output_name_are_refused(saved_tiny_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_random(40, 40)).save(folder / "scene.png")
    Image.fromarray(_random(40, 40)).save(folder / "scene.jpg")
    with pytest.raises(SystemExit):
        predict_main(["--model", str(saved_tiny_model), "--input", str(folder), "--output", str(tmp_path / "out")])
    assert "would both be written as scene.png" in capsys.readouterr().err


EM_MAP = {0: 0, 255: 1}  # ISBI EM masks: 0 = membrane, 255 = cell


@pytest.fixture(scope="module")
def em_model(tmp_path_factory):
    """A tiny model saved as `hfseg finetune --label_map '{"0": 0, "255": 1}'` saves one for the EM masks."""
    from conftest import save_tiny_model
    from transformers import AutoConfig

    directory = save_tiny_model(tmp_path_factory.mktemp("em_model"), {0: "membrane", 1: "cell"})
    config = AutoConfig.from_pretrained(directory)
    LabelSpec(config.id2label, label_map=EM_MAP).save_to_config(config)
    config.save_pretrained(directory)
    return directory


def test_predict_writes_the_original_label_values_on_request(em_model, shared_data, tmp_path):
    """--label_values original: the raw values of the training masks (0/255), pixel for pixel the class ids
    inverted through the saved label map; the default stays class ids."""
    images = shared_data / "isbi_em" / "train" / "image"
    flags = ["--model", str(em_model), "--input", str(images), "--no_overlays"]
    predict_main([*flags, "--output", str(tmp_path / "ids")])
    predict_main([*flags, "--output", str(tmp_path / "raw"), "--label_values", "original"])
    names = sorted(path.name for path in images.glob("*.png"))
    assert sorted(path.name for path in (tmp_path / "raw").glob("*.png")) == names
    seen = set()
    for name in names:
        ids, raw = Image.open(tmp_path / "ids" / name), Image.open(tmp_path / "raw" / name)
        assert ids.mode == "P" and raw.mode == "L" and raw.size == ids.size == (512, 512)
        assert np.array_equal(np.asarray(raw), np.array([0, 255], dtype=np.uint8)[np.asarray(ids)])
        seen |= set(np.unique(np.asarray(raw)).tolist())
    assert seen <= {0, 255} and seen


def test_original_label_values_need_the_saved_label_handling(saved_tiny_model, tmp_path, capsys):
    Image.fromarray(_random(20, 20)).save(tmp_path / "image.png")
    with pytest.raises(SystemExit) as exit_info:
        predict_main(["--model", str(saved_tiny_model), "--input", str(tmp_path / "image.png"),
                      "--output", str(tmp_path / "out"), "--label_values", "original"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "was saved without its label handling" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "refused before anything is written"


def test_plain_pipeline_loads_a_model_with_saved_label_handling(em_model, shared_data):
    from transformers import pipeline

    segments = pipeline("image-segmentation", model=str(em_model))(str(shared_data / "isbi_em/train/image/0.png"))
    assert segments and {segment["label"] for segment in segments} <= {"membrane", "cell"}


def test_original_label_values_of_colour_coded_masks_are_their_colours(tmp_path):
    """A model trained on colour-coded masks (--palette_file) writes each class in its palette colour."""
    from conftest import save_tiny_model
    from transformers import AutoConfig

    model = save_tiny_model(tmp_path / "model", {0: "road", 1: "car"})
    config = AutoConfig.from_pretrained(model)
    LabelSpec(config.id2label, palette={0: (128, 64, 128), 1: (0, 0, 142)}).save_to_config(config)
    config.save_pretrained(model)
    Image.fromarray(_random(30, 40)).save(tmp_path / "street.png")
    flags = ["--model", str(model), "--input", str(tmp_path / "street.png"), "--no_overlays"]
    predict_main([*flags, "--output", str(tmp_path / "ids")])
    predict_main([*flags, "--output", str(tmp_path / "raw"), "--label_values", "original"])
    ids, raw = Image.open(tmp_path / "ids" / "street.png"), Image.open(tmp_path / "raw" / "street.png")
    assert raw.mode == "RGB" and raw.size == (40, 30)
    colours = np.array([[128, 64, 128], [0, 0, 142]], dtype=np.uint8)
    assert np.array_equal(np.asarray(raw), colours[np.asarray(ids)])


def _predict(model, input_path, output):
    return predict_main(["--model", str(model), "--input", str(input_path), "--output", str(output)])


def test_predict_never_writes_over_an_input(saved_tiny_model, tmp_path, capsys):
    """`--input DIR/photo.png --output DIR` once wrote the mask over the photo and exited 0."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_random(40, 40)).save(folder / "photo.png")
    Image.fromarray(_random(30, 50, seed=1)).save(folder / "other.jpg")
    original = (folder / "photo.png").read_bytes()
    for input_path in (folder / "photo.png", folder):
        with pytest.raises(SystemExit) as exit_info:
            _predict(saved_tiny_model, input_path, folder)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert f"over the input image {folder / 'photo.png'}" in error and "outside the input folder" in error, error
        assert (folder / "photo.png").read_bytes() == original, "an input image was overwritten"
        assert not (folder / "other.png").exists(), "nothing is written once an input would be overwritten"


def test_output_folder_that_is_or_holds_the_input_hides_no_input(saved_tiny_model, tmp_path):
    """An --output that is the --input folder, or a folder above it, once made every input vanish ("no image files
    found"); a folder inside --input still leaves out the earlier predictions in it, and says so."""
    folder = tmp_path / "photos"
    (folder / "day").mkdir(parents=True)
    Image.fromarray(_random(40, 40)).save(folder / "day" / "street.jpg")
    written = _predict(saved_tiny_model, folder / "day", folder)  # --output holds --input
    assert written == [folder / "street.png"]
    assert Image.open(folder / "street.png").size == (40, 40)
    written = _predict(saved_tiny_model, folder / "day", folder / "day")  # --output is --input
    assert written == [folder / "day" / "street.png"]


def test_earlier_predictions_inside_input_are_left_out_and_counted(saved_tiny_model, tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_random(40, 40)).save(folder / "street.jpg")
    _predict(saved_tiny_model, folder, folder / "masks")
    with caplog.at_level(logging.WARNING, logger="hfseg"):
        written = _predict(saved_tiny_model, folder, folder / "masks")
    assert written == [folder / "masks" / "street.png"]
    assert f"2 files under --input {folder} are masks or overlays written by hfseg predict" in caplog.text
    written = _predict(saved_tiny_model, folder, folder)  # beside the images: the earlier masks are no inputs
    assert written == [folder / "street.png"]


def test_photos_in_an_output_folder_inside_input_are_inputs_and_never_overwritten(saved_tiny_model, tmp_path, capsys):
    """Leaving out the whole --output folder once hid the user's own photos in it, and wrote masks over them."""
    folder = tmp_path / "photos"
    (folder / "day").mkdir(parents=True)
    Image.fromarray(_random(40, 40)).save(folder / "x.jpg")
    Image.fromarray(_random(30, 30, seed=1)).save(folder / "day" / "x.png")
    original = (folder / "day" / "x.png").read_bytes()
    with pytest.raises(SystemExit):
        _predict(saved_tiny_model, folder, folder / "day")
    assert f"over the input image {folder / 'day' / 'x.png'}" in capsys.readouterr().err
    assert (folder / "day" / "x.png").read_bytes() == original
