"""Label handling: palettes, label maps, 16-bit masks, hints, and image conversion to RGB."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from hfseg.data.labels import LabelSpec, colour_to_index, decode_mask, load_label_map, load_palette, load_rgb
from hfseg.errors import HfsegError


def test_load_palette_formats(tmp_path):
    text = tmp_path / "label_colors.txt"
    text.write_text("64 128 64\tAnimal\n192 0 128\tArchway\n")
    assert load_palette(text) == ({0: (64, 128, 64), 1: (192, 0, 128)}, {0: "Animal", 1: "Archway"})
    plain = tmp_path / "palette.json"
    plain.write_text(json.dumps({"0": [0, 0, 0], "1": [255, 255, 0], "255": [9, 9, 9]}))
    assert load_palette(plain) == ({0: (0, 0, 0), 1: (255, 255, 0), 255: (9, 9, 9)}, None)
    listed = tmp_path / "classes.json"
    listed.write_text(
        json.dumps([{"id": 0, "name": "road", "color": [1, 2, 3]}, {"id": 1, "name": "car", "color": [4, 5, 6]}])
    )
    assert load_palette(listed) == ({0: (1, 2, 3), 1: (4, 5, 6)}, {0: "road", 1: "car"})
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({"0": [1, 1, 1], "1": [1, 1, 1]}))
    with pytest.raises(HfsegError, match="same colour"):
        load_palette(clash)
    with pytest.raises(HfsegError, match="cannot parse"):
        (tmp_path / "bad.txt").write_text("red green blue\n")
        load_palette(tmp_path / "bad.txt")


def test_colour_to_index_and_unknown_colours():
    palette = {0: (0, 0, 0), 1: (255, 0, 0), 255: (255, 255, 255)}
    rgb = np.array([[[0, 0, 0], [255, 0, 0]], [[255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(colour_to_index(rgb, palette), [[0, 1], [255, 1]])
    rgb[0, 0] = (0, 0, 7)
    with pytest.raises(HfsegError, match=r"tile.png: has colours \[\(0, 0, 7\)\] that are not in the palette"):
        colour_to_index(rgb, palette, "tile.png")


def test_spec_decodes_colour_masks_with_palette_only():
    colours = np.zeros((4, 4, 3), dtype=np.uint8)
    colours[:2] = (0, 255, 0)
    mask = Image.fromarray(colours)
    spec = LabelSpec({0: "a", 1: "b"}, palette={0: (0, 0, 0), 1: (0, 255, 0)})
    np.testing.assert_array_equal(spec.decode(mask), np.array([[1] * 4] * 2 + [[0] * 4] * 2))
    with pytest.raises(HfsegError, match="colour-coded RGB mask"):
        LabelSpec({0: "a", 1: "b"}).decode(mask)
    grey = Image.fromarray(np.stack([np.eye(4, dtype=np.uint8)] * 3, axis=-1))  # equal channels: an index mask
    np.testing.assert_array_equal(spec.decode(grey), np.eye(4))


def test_load_label_map_inline_file_and_errors(tmp_path):
    assert load_label_map('{"3": 1, "7": 255}') == {3: 1, 7: 255}
    path = tmp_path / "map.json"
    path.write_text('{"10": 0}')
    assert load_label_map(str(path)) == {10: 0}
    assert load_label_map(None) is None
    with pytest.raises(HfsegError, match="not a JSON object and not a readable file"):
        load_label_map(str(tmp_path / "missing.json"))
    with pytest.raises(HfsegError, match="expected a JSON object"):
        load_label_map('{"a": "b"}')


def test_sixteen_bit_mask_with_label_map():
    values = np.array([[0, 300], [1000, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    mask = Image.open(io.BytesIO(buffer.getvalue()))
    raw = decode_mask(mask)
    np.testing.assert_array_equal(raw, values.astype(np.int64))
    spec = LabelSpec({0: "bg", 1: "a", 2: "b"}, label_map={300: 1, 1000: 2, 65535: 255})
    np.testing.assert_array_equal(spec.encode(raw), [[0, 1], [2, 255]])
    with pytest.raises(HfsegError, match=r"label values \[300\]"):
        LabelSpec({0: "bg", 1: "a"}).encode(raw[:1])


def test_hint_suggests_reduce_labels_for_one_based_masks():
    spec = LabelSpec({0: "a", 1: "b", 2: "c"})
    with pytest.raises(HfsegError, match=r"values \[3\].*set --reduce_labels"):
        spec.encode(np.array([[1, 2, 3]]), "m.png")
    np.testing.assert_array_equal(
        LabelSpec({0: "a", 1: "b", 2: "c"}, reduce_labels=True).encode(np.array([[0, 1, 3]])), [[255, 0, 2]]
    )
    with pytest.raises(HfsegError, match="--label_map"):
        spec.encode(np.array([[40]]), "m.png")


def test_load_rgb_applies_exif_and_converts_modes():
    wide = Image.new("RGB", (6, 2), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    buffer = io.BytesIO()
    wide.save(buffer, format="JPEG", exif=exif.tobytes())
    rotated = load_rgb(Image.open(io.BytesIO(buffer.getvalue())))
    assert rotated.size == (2, 6) and rotated.mode == "RGB"
    for mode in ("L", "RGBA", "P", "CMYK", "I;16", "LA"):
        image = Image.new(mode, (5, 3))
        converted = load_rgb(image)
        assert converted.mode == "RGB" and converted.size == (5, 3), mode
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert load_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (LabelSpec({0: "membrane", 1: "cell"}, label_map={0: 0, 255: 1}), [0, 255]),  # listed 255 beats unmapped 1
        (LabelSpec({0: "a", 1: "b", 2: "c"}, reduce_labels=True), [1, 2, 3]),
        (LabelSpec({0: "a", 1: "b"}, label_map={3: 1, 1: 0, 2: 0, 9: 255}), [1, 3]),  # two raw values: the smallest
        (LabelSpec({0: "a", 1: "b", 2: "c"}), [0, 1, 2]),
    ],
)
def test_raw_values_invert_the_label_handling(spec, expected):
    raw = spec.raw_values()
    assert raw.tolist() == expected
    assert spec.lookup_table(int(raw.max()))[raw].tolist() == list(range(spec.num_labels)), "encode(raw) = class"


def test_raw_values_refuse_a_class_no_raw_value_becomes():
    with pytest.raises(HfsegError, match=r"class 1 \('b'\) has no raw mask value: the label map sends raw 1 to 0"):
        LabelSpec({0: "a", 1: "b"}, label_map={1: 0}).raw_values()


def test_label_handling_round_trips_through_a_saved_model_config(tmp_path):
    from transformers import SegformerConfig

    spec = LabelSpec(
        {0: "road", 1: "car"}, ignore_index=0, label_map={7: 0, 26: 1, 3: 0}, palette={7: (1, 2, 3), 26: (4, 5, 6)}
    )
    config = SegformerConfig(id2label=spec.id2label, label2id=spec.label2id)
    assert LabelSpec.from_config(config) is None, "a model saved without it: the flags decide, as before"
    spec.save_to_config(config)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["hfseg_label_spec"]
    assert saved["label_map"] == {"3": 0, "7": 0, "26": 1} and saved["ignore_index"] == 0
    assert LabelSpec.from_config(SegformerConfig.from_pretrained(tmp_path)) == spec


def test_a_malformed_saved_label_handling_names_the_file_and_the_entry():
    from transformers import SegformerConfig

    config = SegformerConfig(hfseg_label_spec={"reduce_labels": False})
    with pytest.raises(HfsegError, match=r"run/config.json: 'hfseg_label_spec' is malformed \(KeyError"):
        LabelSpec.from_config(config, "run/config.json")


def test_id2label_keyed_by_mask_values_gets_the_label_map_fix():
    with pytest.raises(HfsegError) as error:
        LabelSpec({0: "membrane", 255: "cell"})
    message = str(error.value)
    assert "got [0, 255]" in message
    assert """({"0": "membrane", "1": "cell"})""" in message and """--label_map '{"0": 0, "255": 1}'""" in message
