"""Inference modes: slide windows and stitching, whole == slide when one window covers the image, flip TTA
of a flip-equivariant model equals plain inference, memory bounded by the crop batch."""

import pytest
import torch
from conftest import tiny_model
from transformers.modeling_outputs import SemanticSegmenterOutput

from hfseg.errors import HfsegError
from hfseg.evaluation.inference import InferenceOptions, logits_at_sizes, slide_logits, slide_windows


class PointwiseSegmenter(torch.nn.Module):
    """A 1x1-convolution 'model': each pixel's logits depend on that pixel only, so the model commutes with
    crops and flips — the reference against which stitching and TTA must be exact. Records input shapes."""

    def __init__(self, num_labels: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.classifier = torch.nn.Conv2d(3, num_labels, kernel_size=1)
        self.seen_shapes = []

    def forward(self, pixel_values):
        self.seen_shapes.append(tuple(pixel_values.shape))
        return SemanticSegmenterOutput(logits=self.classifier(pixel_values))


@pytest.fixture(scope="module")
def segformer():
    return tiny_model("segformer").eval()


def test_slide_windows_follow_mmseg_grid():
    # 100x120 image, 64 crops every 42 px: starts 0, 42, then the last window pushed back to end at 120.
    assert slide_windows(100, 120, 64, 42) == [
        (0, 64, 0, 64), (0, 64, 42, 106), (0, 64, 56, 120),
        (36, 100, 0, 64), (36, 100, 42, 106), (36, 100, 56, 120),
    ]  # fmt: skip
    assert slide_windows(30, 50, 64, 42) == [(0, 30, 0, 50)]  # smaller than a crop: one window, the image


@torch.no_grad()
def test_whole_equals_slide_when_crop_covers_image(segformer):
    pixel_values = torch.randn(2, 3, 48, 64)
    sizes = [(97, 130), (48, 64)]
    whole = logits_at_sizes(segformer, pixel_values, sizes)
    slide = logits_at_sizes(segformer, pixel_values, sizes, InferenceOptions(mode="slide", crop_size=64, stride=40))
    for a, b in zip(whole, slide, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a, b)


@torch.no_grad()
def test_slide_stitching_is_exact_for_a_pointwise_model():
    model = PointwiseSegmenter()
    pixel_values = torch.randn(2, 3, 50, 70)
    whole = model(pixel_values).logits
    options = InferenceOptions(mode="slide", crop_size=24, stride=16, crop_batch_size=5)
    stitched = slide_logits(model, pixel_values, options.crop_size, options.stride, options.crop_batch_size)
    torch.testing.assert_close(stitched, whole, rtol=1e-5, atol=1e-6)
    masks_whole = [x.argmax(0) for x in logits_at_sizes(model, pixel_values, [(50, 70)] * 2)]
    masks_slide = [x.argmax(0) for x in logits_at_sizes(model, pixel_values, [(50, 70)] * 2, options)]
    assert all(torch.equal(a, b) for a, b in zip(masks_whole, masks_slide, strict=True))


@torch.no_grad()
def test_slide_memory_is_bounded_by_crop_batch():
    model = PointwiseSegmenter()
    pixel_values = torch.randn(3, 3, 40, 40)
    slide_logits(model, pixel_values, crop_size=16, stride=12, crop_batch_size=4)
    windows = len(slide_windows(40, 40, 16, 12))
    assert windows == 9  # starts 0, 12, 24 on each axis
    assert max(shape[0] for shape in model.seen_shapes) == 4
    assert all(shape[-2:] == (16, 16) for shape in model.seen_shapes)
    assert sum(shape[0] for shape in model.seen_shapes) == 3 * windows


@torch.no_grad()
def test_flip_tta_of_flip_symmetric_model_equals_plain():
    model = PointwiseSegmenter()
    pixel_values = torch.randn(2, 3, 32, 40)
    sizes = [(64, 80), (32, 40)]
    plain = logits_at_sizes(model, pixel_values, sizes)
    flipped = logits_at_sizes(model, pixel_values, sizes, InferenceOptions(flip=True))
    for a, b in zip(plain, flipped, strict=True):
        torch.testing.assert_close(b.exp(), a.softmax(0), rtol=1e-5, atol=1e-6)
        assert torch.equal(a.argmax(0), b.argmax(0))


@torch.no_grad()
def test_flip_tta_changes_a_real_model_and_averages_probabilities(segformer):
    pixel_values = torch.randn(1, 3, 32, 40)
    plain = logits_at_sizes(segformer, pixel_values, [(32, 40)])[0]
    mirrored = logits_at_sizes(segformer, pixel_values.flip(-1), [(32, 40)])[0].flip(-1)
    tta = logits_at_sizes(segformer, pixel_values, [(32, 40)], InferenceOptions(flip=True))[0]
    torch.testing.assert_close(tta.exp(), (plain.softmax(0) + mirrored.softmax(0)) / 2, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_multi_scale_views_are_probabilities_at_the_original_size(segformer):
    pixel_values = torch.randn(2, 3, 48, 48)  # the tiny SegFormer needs inputs of 32 px and more
    sizes = [(50, 70), (40, 30)]
    single = logits_at_sizes(segformer, pixel_values, sizes, InferenceOptions(scales=(1.0,)))
    assert all(torch.equal(a, b) for a, b in zip(single, logits_at_sizes(segformer, pixel_values, sizes), strict=True))
    options = InferenceOptions(mode="slide", crop_size=32, stride=20, scales=(0.75, 1.25), flip=True)
    tta = logits_at_sizes(segformer, pixel_values, sizes, options)
    for logits, size in zip(tta, sizes, strict=True):
        assert tuple(logits.shape) == (5, *size)
        torch.testing.assert_close(logits.exp().sum(0), torch.ones(size))


@torch.no_grad()
def test_tta_holds_one_sample_at_full_size_at_a_time():
    """TTA runs each sample's views on their own, so one sample's probability sum exists at a time; the batch's
    results equal each image run alone."""
    from hfseg.evaluation.inference import iter_logits_at_sizes

    model = PointwiseSegmenter()
    pixel_values = torch.randn(3, 3, 20, 24)
    sizes = [(40, 48), (20, 24), (30, 36)]
    options = InferenceOptions(scales=(0.5, 1.0), flip=True)
    generator = iter_logits_at_sizes(model, pixel_values, sizes, options)
    first = next(generator)
    assert len(model.seen_shapes) == 4  # the first sample's 4 views, nothing of the other samples yet
    assert {shape[0] for shape in model.seen_shapes} == {1}
    rest = list(generator)
    assert len(model.seen_shapes) == 12
    for index, logits in enumerate([first, *rest]):
        alone = logits_at_sizes(model, pixel_values[index : index + 1], sizes[index : index + 1], options)[0]
        assert logits.shape == (4, *sizes[index]) and torch.equal(logits, alone)


@torch.no_grad()
def test_padded_batch_equals_images_run_one_by_one(segformer):
    first, second = torch.randn(1, 3, 48, 64), torch.randn(1, 3, 56, 40)
    padded = torch.zeros(2, 3, 56, 64)
    padded[0, :, :48, :64], padded[1, :, :56, :40] = first[0], second[0]
    options = InferenceOptions(mode="slide", crop_size=32, stride=20)
    batch = logits_at_sizes(segformer, padded, [(96, 128), (56, 40)], options, pixel_sizes=[(48, 64), (56, 40)])
    assert torch.equal(batch[0], logits_at_sizes(segformer, first, [(96, 128)], options)[0])
    assert torch.equal(batch[1], logits_at_sizes(segformer, second, [(56, 40)], options)[0])


def test_options_name_the_flag_and_the_fix():
    with pytest.raises(HfsegError, match="inference mode 'tiles' \\(--eval_mode\\)"):
        InferenceOptions(mode="tiles")
    with pytest.raises(HfsegError, match="--eval_stride 600 is larger than --eval_crop_size 512"):
        InferenceOptions(mode="slide", crop_size=512, stride=600)
    with pytest.raises(HfsegError, match="--eval_scales"):
        InferenceOptions(scales=(1.0, 0.0))
    resolved = InferenceOptions(mode="slide").with_input_size(96)
    assert (resolved.crop_size, resolved.stride, resolved.short_side) == (96, 64, 96)
    assert InferenceOptions(mode="slide", short_side=0).with_input_size(96).short_side == 0


def test_options_from_training_arguments(tmp_path):
    from hfseg.config import parse_args

    _, _, training_args = parse_args(
        ["--output_dir", str(tmp_path), "--eval_mode", "slide", "--eval_scales", "0.5", "1.0", "--eval_flip",
         "--eval_crop_size", "64", "--eval_stride", "32"]
    )  # fmt: skip
    options = InferenceOptions.from_arguments(training_args)
    assert options == InferenceOptions(mode="slide", scales=(0.5, 1.0), flip=True, crop_size=64, stride=32)


def test_iter_logits_yields_one_sample_at_a_time_and_matches_the_list(segformer):
    import inspect

    from hfseg.evaluation.inference import iter_logits_at_sizes

    pixel_values = torch.randn(3, 3, 32, 32)
    sizes = [(40, 50), (33, 31), (64, 64)]
    lazy = iter_logits_at_sizes(segformer, pixel_values, sizes)
    assert inspect.isgenerator(lazy)
    first = next(lazy)  # only the first sample has been upsampled so far
    assert first.shape[-2:] == (40, 50)
    rest = list(lazy)
    eager = logits_at_sizes(segformer, pixel_values, sizes)
    assert all(torch.equal(a, b) for a, b in zip([first, *rest], eager, strict=True))
