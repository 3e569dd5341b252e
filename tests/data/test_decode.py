"""Decoding rows: torchvision gives PIL's pixels (EXIF orientation, modes), other formats go through PIL."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from hfseg.data.labels import load_rgb
from hfseg.data.preprocess import decode_rgb


def _encoded(image: Image.Image, fmt: str, **options) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return {"bytes": buffer.getvalue(), "path": None}


@pytest.mark.parametrize(
    ("mode", "fmt"), [("RGB", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"),
                      ("RGB", "BMP"), ("RGB", "TIFF"), ("I;16", "PNG")],
)  # fmt: skip
def test_decode_rgb_matches_pil(mode, fmt):
    array = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    image = (
        Image.fromarray(array).convert(mode)
        if mode != "I;16"
        else Image.fromarray(array[..., 0].astype(np.uint16) * 200)
    )
    row = _encoded(image, fmt)
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
