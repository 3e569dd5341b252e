"""Decoding rows: torchvision gives PIL's pixels (EXIF orientation, modes), other formats go through PIL; 16-bit and
float images keep their values (`read_bands`) until normalisation."""

import io
import json

import numpy as np
import pytest
import tifffile
import torch
from conftest import png16_bytes
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from hfseg.config import DataArguments
from hfseg.data.adapters import build_label_spec, load_source
from hfseg.data.adapters.base import row_files
from hfseg.data.bands import read_rgb_bands
from hfseg.data.labels import LabelSpec, load_rgb
from hfseg.data.preprocess import attach_transform, decode_rgb, encode_pair
from hfseg.data.transforms import EvalTransform, TrainTransform
from hfseg.errors import HfsegError

MEAN, STD = (0.2, 0.3, 0.4), (0.5, 0.25, 0.125)


def _encoded(image: Image.Image, fmt: str, **options) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.mark.parametrize(
    ("mode", "fmt"), [("RGB", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"),
                      ("RGB", "BMP"), ("RGB", "TIFF"), ("L", "TIFF")],
)  # fmt: skip
def test_decode_rgb_matches_pil(mode, fmt):
    array = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    row = _encoded(Image.fromarray(array).convert(mode), fmt)
    expected = TF.pil_to_tensor(load_rgb(Image.open(io.BytesIO(row["bytes"]))))
    decoded = decode_rgb(row)
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, expected)


def test_decode_rgb_applies_exif_orientation(tmp_path):
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    array[:, :10] = 255  # a white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    for fmt, name in (("JPEG", "a.jpg"), ("PNG", "a.png")):
        Image.fromarray(array).save(tmp_path / name, format=fmt, exif=exif.tobytes())
        for row in (
            {"bytes": None, "path": str(tmp_path / name)},
            {"bytes": (tmp_path / name).read_bytes(), "path": None},
        ):
            decoded = decode_rgb(row)
            assert decoded.shape == (3, 30, 20), fmt
            assert decoded[:, :10].float().mean() > 200 and decoded[:, 20:].float().mean() < 50  # band now on top


def _high_bit_files(folder) -> dict:
    """name -> (file, the (3, H, W) values a 3-channel model reads: gray repeated, alpha dropped) for 16-bit and
    float images in each form PIL would clip or truncate to 8 bits."""
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    colour = rng.integers(0, 65536, (20, 30, 4), dtype=np.uint16)
    real = rng.random((20, 30, 3), dtype=np.float32) * 2
    Image.fromarray(gray).save(folder / "gray16.png")
    for name, bands in (("gray_alpha16.png", 2), ("rgb16.png", 3), ("rgba16.png", 4)):
        (folder / name).write_bytes(png16_bytes(colour[..., :bands]))
    tifffile.imwrite(folder / "gray16.tif", gray)
    tifffile.imwrite(folder / "rgb16.tif", colour[..., :3], photometric="rgb")
    tifffile.imwrite(folder / "float.tif", real[..., 0])
    tifffile.imwrite(folder / "rgb_float.tif", real, photometric="rgb")
    gray3, colour3 = np.stack([gray] * 3), colour[..., :3].transpose(2, 0, 1)
    expected = {
        "gray16.png": gray3,
        "gray_alpha16.png": np.stack([colour[..., 0]] * 3),
        "rgb16.png": colour3,
        "rgba16.png": colour3,
        "gray16.tif": gray3,
        "rgb16.tif": colour3,
        "float.tif": np.stack([real[..., 0]] * 3),
        "rgb_float.tif": real.transpose(2, 0, 1),
    }
    return {name: (folder / name, values) for name, values in expected.items()}


def test_16bit_and_float_images_keep_their_values_on_the_rgb_path(tmp_path):
    for name, (path, expected) in _high_bit_files(tmp_path).items():
        for row in ({"bytes": None, "path": str(path)}, {"bytes": path.read_bytes(), "path": None}):
            decoded = decode_rgb(row)
            assert decoded.dtype == torch.from_numpy(expected).dtype, name
            np.testing.assert_array_equal(decoded.numpy(), expected, err_msg=name)
        pixels, _ = encode_pair(
            {"bytes": None, "path": str(path)}, Image.fromarray(np.zeros((20, 30), np.uint8)), LabelSpec({0: "a"})
        )  # the preview figures and the evaluation gallery: the same values
        np.testing.assert_array_equal(pixels.numpy(), expected, err_msg=name)
        np.testing.assert_array_equal(read_rgb_bands(str(path)).numpy(), expected, err_msg=name)  # predict, pipeline
    pil_gray = Image.open(tmp_path / "gray16.png")  # an image datasets decoded with PIL (mode I;16)
    np.testing.assert_array_equal(decode_rgb(pil_gray).numpy(), _high_bit_files(tmp_path)["gray16.png"][1])


def test_rgb_path_names_an_image_with_other_than_rgb_bands(tmp_path):
    tifffile.imwrite(
        tmp_path / "five.tif", np.zeros((8, 8, 5), np.uint16), photometric="minisblack", planarconfig="contig"
    )
    with pytest.raises(HfsegError, match=r"five.tif has 5 band\(s\) but the model reads 3 \(RGB\).*--num_channels 5"):
        decode_rgb({"bytes": None, "path": str(tmp_path / "five.tif")})


@pytest.fixture
def gray16_folder(tmp_path):
    """A folder data set of 16-bit grayscale PNGs (values over 0..65535) with 2-class masks."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    mask = np.zeros((24, 24), dtype=np.uint8)
    mask[:, 12:] = 1
    for index in range(4):
        gray = np.random.default_rng(index).integers(0, 65536, (24, 24), dtype=np.uint16)
        Image.fromarray(gray).save(tmp_path / "images" / f"{index}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{index}.png")
    (tmp_path / "id2label.json").write_text(json.dumps({"0": "background", "1": "road"}))
    return tmp_path


def test_16bit_grayscale_folder_trains_on_value_over_65535_not_saturated(gray16_folder):
    data_args = DataArguments(data_dir=str(gray16_folder), layout="folder", validation_fraction=0.5)
    source = load_source(data_args)
    spec = build_label_spec(source, data_args)
    columns = (source.image_column, source.label_column)
    train = TrainTransform(24, (1.0, 1.0), cat_max_ratio=1.0, hflip_prob=0.0, photometric=False, mean=MEAN, std=STD)
    for split, transform in (("train", train), ("validation", EvalTransform(None, MEAN, STD))):
        dataset = source.dataset[split]
        files = [path for path, _ in row_files(dataset, list(range(len(dataset))), columns)]
        transformed = attach_transform(dataset, *columns, spec, transform, split)
        for index, path in enumerate(files):
            pixel_values = transformed[index]["pixel_values"]
            values = np.asarray(Image.open(path), dtype=np.float64) / 65535
            expected = (values[None] - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
            assert pixel_values.shape == (3, 24, 24)
            np.testing.assert_allclose(pixel_values.numpy(), expected, atol=1e-5, err_msg=f"{split} {path}")
            saturated = (1 - np.array(MEAN)) / np.array(STD)
            assert (pixel_values.numpy() < saturated[:, None, None] - 1e-3).mean() > 0.9, "not saturated to white"
