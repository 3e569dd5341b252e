"""Images read with their own bands and bit depth: multi-band TIFFs, 16-bit grayscale, the [0, 1] scale, the
transforms on N-band 16-bit images, per-band statistics and the pair check on TIFFs."""

import glob

import numpy as np
import pytest
import tifffile
import torch
from conftest import write_multiband_folder
from PIL import Image

from hfseg.data.bands import band_statistics, preview_rgb, read_bands
from hfseg.data.checks import inspect_pair
from hfseg.data.transforms import EvalTransform, PhotometricDistortion, TrainTransform
from hfseg.errors import HfsegError


@pytest.fixture(scope="module")
def multiband(tmp_path_factory):
    return write_multiband_folder(tmp_path_factory.mktemp("multiband"))


def test_four_band_16bit_tiff_is_read_whole_in_its_own_type(multiband):
    path = multiband / "images" / "train" / "000.tif"
    stored = tifffile.imread(path)  # (64, 64, 4) uint16, values up to 4095
    pixels = read_bands(str(path), 4)
    assert pixels.dtype == torch.uint16 and pixels.shape == (4, 64, 64)
    np.testing.assert_array_equal(pixels.numpy(), stored.transpose(2, 0, 1))
    # The same file as a datasets row and as the PIL image datasets would hand over (PIL reads none of it).
    np.testing.assert_array_equal(read_bands({"path": None, "bytes": path.read_bytes()}).numpy(), pixels.numpy())
    with pytest.raises(Exception):  # noqa: B017 - what PIL alone would do with this file
        Image.open(path).load()


def test_band_sequential_and_page_per_band_tiffs_read_as_interleaved(tmp_path):
    array = np.arange(5 * 6 * 3, dtype=np.uint16).reshape(5, 6, 3) * 300
    tifffile.imwrite(
        tmp_path / "planar.tif", array.transpose(2, 0, 1), photometric="minisblack", planarconfig="separate"
    )
    tifffile.imwrite(tmp_path / "pages.tif", array.transpose(2, 0, 1), photometric="minisblack")  # 3 pages
    for name in ("planar.tif", "pages.tif"):
        np.testing.assert_array_equal(read_bands(str(tmp_path / name), 3).numpy(), array.transpose(2, 0, 1))


def test_16bit_grayscale_png_keeps_values_above_255(tmp_path):
    gray = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    pixels = read_bands(str(tmp_path / "gray16.png"), 1)
    assert pixels.dtype == torch.uint16 and pixels.shape == (1, 12, 10)
    np.testing.assert_array_equal(pixels[0].numpy(), gray)


def test_16bit_colour_png_keeps_its_16_bits_and_its_alpha(tmp_path):
    from conftest import png16_bytes

    rgba = np.random.default_rng(2).integers(0, 65536, (12, 10, 4), dtype=np.uint16)
    (tmp_path / "rgba16.png").write_bytes(png16_bytes(rgba))
    for image in (str(tmp_path / "rgba16.png"), Image.open(tmp_path / "rgba16.png")):  # PIL alone: 8-bit RGBA
        pixels = read_bands(image, 4)
        assert pixels.dtype == torch.uint16
        np.testing.assert_array_equal(pixels.numpy(), rgba.transpose(2, 0, 1))


def test_wrong_band_count_and_signed_pixels_are_named_with_the_fix(multiband, tmp_path):
    path = multiband / "images" / "train" / "001.tif"
    with pytest.raises(HfsegError, match=r"001.tif has 4 band\(s\) but the model reads --num_channels 3; .*"):
        read_bands(str(path), 3)
    tifffile.imwrite(tmp_path / "signed.tif", np.full((4, 4), -3, dtype=np.int16))
    with pytest.raises(HfsegError, match=r"signed.tif has int16 pixels \(range -3..-3\).*8- or 16-bit unsigned"):
        read_bands(str(tmp_path / "signed.tif"))


def test_eval_transform_scales_16bit_by_65535_then_normalises_per_band():
    pixels = torch.tensor([0, 4095, 65535, 30000], dtype=torch.uint16).reshape(4, 1, 1).expand(4, 2, 2)
    mean, std = (0.1, 0.2, 0.3, 0.4), (0.5, 0.25, 0.125, 2.0)
    normalised, _ = EvalTransform(None, mean, std)(pixels.contiguous(), None)
    expected = (torch.tensor([0, 4095, 65535, 30000]) / 65535 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(normalised[:, 0, 0], expected.float())


def test_train_transform_takes_four_band_16bit_images(multiband):
    pixels = read_bands(str(multiband / "images" / "train" / "000.tif"), 4)
    mask = np.asarray(Image.open(multiband / "masks" / "train" / "000.png")).astype(np.int64)
    torch.manual_seed(0)
    transform = TrainTransform(48, (0.8, 1.2), mean=(0.01, 0.02, 0.03, 0.04), std=(0.01, 0.01, 0.01, 0.01))
    image, labels = transform(pixels, mask)
    assert image.shape == (4, 48, 48) and image.dtype == torch.float32 and labels.shape == (48, 48)
    assert torch.isfinite(image).all() and image.abs().max() < 50  # 16-bit scaled by 65535, not by 255
    assert set(labels.unique().tolist()) <= {0, 1, 2, 255}


def test_train_transform_takes_one_band_8bit_images(shared_data):
    pixels = read_bands(str(shared_data / "isbi_em" / "train" / "image" / "0.png"), 1)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 512, 512)
    transform = TrainTransform(64, (0.5, 2.0), mean=(0.5,), std=(0.2,))
    for seed in range(4):  # photometric steps in every order, the hue step among them
        torch.manual_seed(seed)
        image, labels = transform(pixels, np.zeros((512, 512), dtype=np.int64))
        assert image.shape == (1, 64, 64) and torch.isfinite(image).all() and labels.shape == (64, 64)


def test_band_photometric_is_brightness_and_contrast_clamped_to_the_type():
    image = torch.tensor([0, 1000, 60000, 65535], dtype=torch.uint16).reshape(4, 1, 1)
    brighter = PhotometricDistortion(brightness=(1.1, 1.1))(image.float(), 65535.0)
    assert brighter.flatten().tolist() == [0, 1100, 65535, 65535]
    flat = PhotometricDistortion(contrast=(0.0, 0.0))(image.float(), 65535.0)
    assert flat.unique().tolist() == [int(image.float().mean())]
    unbounded = PhotometricDistortion(brightness=(1.1, 1.1))(image.float() / 65535, None)  # float: its own range
    assert unbounded.max() > 1.0
    jitter = PhotometricDistortion(brightness=0.1, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=0.05)
    assert jitter(image.expand(4, 3, 3).float(), 65535.0).shape == (4, 3, 3)


def test_band_statistics_equal_numpy_on_the_fixture(multiband):
    files = sorted(glob.glob(str(multiband / "images" / "train" / "*.tif")))
    stacked = np.stack([tifffile.imread(file) for file in files]).astype(np.float64) / 65535
    mean, std = band_statistics(files, progress=False)
    np.testing.assert_allclose(mean, stacked.mean(axis=(0, 1, 2)), rtol=1e-10)
    np.testing.assert_allclose(std, stacked.std(axis=(0, 1, 2)), rtol=1e-10)
    with pytest.raises(HfsegError, match="has 1 band\\(s\\) but the images before it have 4"):
        band_statistics([files[0], np.zeros((4, 4), dtype=np.uint8)], progress=False)


def test_pair_check_reads_the_size_of_a_multiband_tiff(multiband):
    image = {"path": str(multiband / "images" / "train" / "002.tif"), "bytes": None}
    mask = {"path": str(multiband / "masks" / "train" / "002.png"), "bytes": None}
    size, _, raw, problems = inspect_pair(image, mask, None, "train row 2")
    assert problems == [] and size == (64, 64) and set(np.unique(raw).tolist()) == {0, 1, 2}


def test_preview_of_bands_is_an_rgb_picture(multiband):
    preview = preview_rgb(read_bands(str(multiband / "images" / "val" / "000.tif")))
    assert preview.mode == "RGB" and preview.size == (64, 64)
    assert np.asarray(preview).min() == 0 and np.asarray(preview).max() == 255  # stretched per band
