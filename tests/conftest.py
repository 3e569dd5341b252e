"""Shared fixtures: no network, tiny random-init models built from configs, small data sets."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ipaddress  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def find_shared_data() -> Path:
    """The project's read-only sample data: $HFSEG_SHARED_DATA, else `shared/data` next to this checkout, else
    next to the checkout this one was cloned from (a fresh clone in a temporary folder)."""
    if os.environ.get("HFSEG_SHARED_DATA"):
        return Path(os.environ["HFSEG_SHARED_DATA"])
    candidates = [ROOT.parent / "shared" / "data"]
    config = ROOT / ".git" / "config"
    if config.is_file():
        import configparser

        parser = configparser.ConfigParser(strict=False)
        parser.read(config)
        origin = parser.get('remote "origin"', "url", fallback="")
        if origin and Path(origin).is_dir():  # a local clone: its origin is a folder
            candidates.append(Path(origin).resolve().parent / "shared" / "data")
    return next((path for path in candidates if path.is_dir()), candidates[0])


SHARED_DATA = find_shared_data()

TINY_SEGFORMER = {
    "hidden_sizes": [8, 16, 24, 32],
    "depths": [1, 1, 1, 1],
    "num_attention_heads": [1, 1, 1, 1],
    "decoder_hidden_size": 16,
    "drop_path_rate": 0.0,
    "classifier_dropout_prob": 0.0,
}
TINY_UPERNET = {
    "backbone_config": {
        "model_type": "convnext",
        "hidden_sizes": [8, 16, 24, 32],
        "depths": [1, 1, 1, 1],
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
    "hidden_size": 16,
    "auxiliary_channels": 8,
    "pool_scales": [1, 2],
}

TINY_UPERNET_SWIN = {
    **TINY_UPERNET,
    "backbone_config": {
        "model_type": "swin",
        "embed_dim": 8,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
        "window_size": 2,
        "image_size": 64,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
    },
}

# Mask-classification models (trained with their own Hungarian-matched loss), tiny enough to train in seconds.
TINY_SWIN_BACKBONE = {
    "model_type": "swin",
    "embed_dim": 16,
    "depths": [1, 1, 1, 1],
    "num_heads": [1, 1, 2, 2],
    "window_size": 4,
    "image_size": 64,
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}
TINY_MASK_CLASSIFICATION = {
    "mask2former": {
        "backbone_config": TINY_SWIN_BACKBONE,
        "hidden_dim": 32, "encoder_feedforward_dim": 64, "dim_feedforward": 64, "encoder_layers": 1,
        "decoder_layers": 2, "num_queries": 8, "num_attention_heads": 2, "mask_feature_size": 32,
        "feature_size": 32, "train_num_points": 64,
    },
    "maskformer": {
        "backbone_config": TINY_SWIN_BACKBONE, "fpn_feature_size": 32, "mask_feature_size": 32, "num_queries": 8,
        "decoder_config": {
            "model_type": "detr", "d_model": 32, "encoder_layers": 1, "decoder_layers": 2,
            "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64, "num_queries": 8,
        },
    },
    "eomt": {
        "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
        "num_blocks": 1, "patch_size": 16, "image_size": 64, "num_queries": 8, "num_upscale_blocks": 2,
        "train_num_points": 64, "num_register_tokens": 0,
    },
    # is_training: with its text encoder and query-text contrastive loss. Its text queries are projected to hidden_dim
    # and joined with prompt embeddings of text_encoder_width, so the two must be equal (64: one attention head);
    # conv_dim and mask_dim too (`fit_mask_classification_config`; the query projection reads the mask features).
    "oneformer": {
        "backbone_config": TINY_SWIN_BACKBONE, "conv_dim": 64, "mask_dim": 64, "hidden_dim": 64,
        "encoder_feedforward_dim": 64, "encoder_layers": 1, "decoder_layers": 3, "query_dec_layers": 1,
        "num_attention_heads": 2, "dim_feedforward": 64, "num_queries": 8, "train_num_points": 64,
        "is_training": True, "task_seq_len": 24, "text_encoder_context_length": 24, "text_encoder_width": 64,
        "text_encoder_num_layers": 1, "text_encoder_vocab_size": 600, "text_encoder_n_ctx": 2,
    },
}  # fmt: skip


def write_tiny_clip_tokenizer(directory) -> Path:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols, alone and word-final (`</w>`), and the two special
    tokens (514 ids, no merges: one token per character), as vocab.json + merges.txt + tokenizer_config.json."""
    import json

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(symbol + "</w>" for symbol in symbols), "<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
    return directory


@pytest.fixture(scope="session")
def tiny_clip_tokenizer(tmp_path_factory) -> Path:
    """The folder of a tiny CLIP tokenizer (`write_tiny_clip_tokenizer`), for OneFormer's task and text inputs."""
    return write_tiny_clip_tokenizer(tmp_path_factory.mktemp("tiny_clip_tokenizer"))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any connection to a non-loopback address fails the test: a test that reaches a hub is a bug."""
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None:
            try:
                if not ipaddress.ip_address(host).is_loopback:
                    raise RuntimeError(f"test tried to reach the network ({address})")
            except ValueError:
                if host != "localhost":
                    raise RuntimeError(f"test tried to reach the network ({address})") from None
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), (
        f"real sample data expected at {SHARED_DATA}: check out next to shared/ (or clone from such a checkout), "
        "or set HFSEG_SHARED_DATA"
    )
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_synthetic():
    from hfseg.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(train_size=16, eval_size=6, seed=1, min_size=48, max_size=80)


def tiny_model(model_type: str = "segformer", num_labels: int = 5):
    import json

    from hfseg.config import ModelArguments
    from hfseg.models.build import build_model

    overrides = TINY_SEGFORMER if model_type == "segformer" else TINY_UPERNET
    args = ModelArguments(model_type=model_type, config_overrides=json.dumps(overrides))
    return build_model(args, {i: f"class_{i}" for i in range(num_labels)})


def tiny_run_args(output_dir, *extra: str) -> list[str]:
    """Flags for a finetune run on synthetic data that takes seconds."""
    import json

    return [
        "--model_type", "segformer", "--config_overrides", json.dumps(TINY_SEGFORMER),
        "--image_size", "64", "--crop_size", "64", "--dataset_name", "synthetic",
        "--synthetic_train_size", "16", "--synthetic_eval_size", "6", "--max_steps", "4",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1",
        "--num_preview_images", "2", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip


def save_tiny_model(directory, id2label: dict[int, str], image_size: int = 64):
    """A tiny random-init SegFormer saved with its image processor, as `hfseg finetune` saves a model."""
    import json

    from transformers import SegformerImageProcessor

    from hfseg.config import ModelArguments
    from hfseg.models.build import build_model

    model = build_model(ModelArguments(model_type="segformer", config_overrides=json.dumps(TINY_SEGFORMER)), id2label)
    model.save_pretrained(directory)
    processor = SegformerImageProcessor(size={"height": image_size, "width": image_size}, do_reduce_labels=False)
    processor.save_pretrained(directory)
    return Path(directory)


@pytest.fixture(scope="session")
def saved_tiny_model(tmp_path_factory):
    """A saved tiny SegFormer for the synthetic classes (model dir for evaluate / predict / pipeline tests)."""
    from hfseg.data.synthetic import SYNTHETIC_ID2LABEL

    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"), SYNTHETIC_ID2LABEL)


@pytest.fixture
def host_reads():
    """A tensor class: `t.as_subclass(host_reads)` gives a tensor whose results log every read of a value on the
    host (a device sync on a GPU: `.item()`, `bool()`, `int()`, `.tolist()`, `.cpu()` ...) in `host_reads.reads`."""
    import torch

    reads_on_host = {
        torch.Tensor.item,
        torch.Tensor.__bool__,
        torch.Tensor.__int__,
        torch.Tensor.__float__,
        torch.Tensor.tolist,
        torch.Tensor.cpu,
        torch.Tensor.numpy,
    }

    class Counting(torch.Tensor):
        reads: list[str] = []

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func in reads_on_host:
                cls.reads.append(func.__name__)
            return super().__torch_function__(func, types, args, kwargs or {})

    return Counting


MULTIBAND_ID2LABEL = {"0": "water", "1": "field", "2": "forest"}


def write_multiband_folder(root, train: int = 4, validation: int = 2, size: int = 64, bands: int = 4) -> Path:
    """A `folder` layout of 16-bit, `bands`-band TIFF images (`images/{train,val}/NNN.tif`, pixel-interleaved)
    with 8-bit PNG masks of 3 classes (`masks/{train,val}/NNN.png`) and `id2label.json`; values span 0..4095
    (a 12-bit sensor), a different range per band, and each class is brighter in one band."""
    import json

    import numpy as np
    import tifffile
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", validation)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for index in range(count):
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[:, size // 3 :] = 1
            mask[size // 2 :, : size // 2] = 2
            mask = np.roll(mask, index * 5, axis=1)
            image = rng.integers(0, 1000, (size, size, bands)) + 400 * np.arange(bands)
            for label in range(3):
                image[..., label % bands][mask == label] += 1500
            tifffile.imwrite(
                root / "images" / split / f"{index:03d}.tif",
                np.clip(image, 0, 4095).astype(np.uint16),
                photometric="minisblack",
                planarconfig="contig",
            )
            Image.fromarray(mask).save(root / "masks" / split / f"{index:03d}.png")
    (root / "id2label.json").write_text(json.dumps(MULTIBAND_ID2LABEL))
    return root


def png16_bytes(array) -> bytes:
    """(H, W) or (H, W, C) uint16 -> a 16-bit PNG (gray, gray+alpha, RGB or RGBA by C), written by hand: Pillow
    writes 16-bit grayscale only."""
    import struct
    import zlib

    import numpy as np

    array = np.asarray(array, dtype=np.uint16)
    height, width = array.shape[:2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[1 if array.ndim == 2 else array.shape[2]]
    rows = b"".join(b"\x00" + array[row].astype(">u2").tobytes() for row in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def tiny_mask_classification_model(model_type: str = "mask2former", num_labels: int = 5, tokenizer_dir=None):
    """A tiny random-init Mask2Former, MaskFormer or OneFormer (Swin backbone) or EoMT (2-layer ViT), 5 queries, built
    from configs; its class and mask heads scaled up so that its class scores differ across pixels (at init they are
    near uniform). OneFormer (for inference: `is_training` false) takes its task inputs from the CLIP tokenizer in
    `tokenizer_dir`."""
    import torch
    from transformers import (
        DetrConfig,
        EomtConfig,
        EomtForUniversalSegmentation,
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        MaskFormerConfig,
        MaskFormerForInstanceSegmentation,
        SwinConfig,
    )

    swin = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    labels = {"num_labels": num_labels, "id2label": {i: f"class_{i}" for i in range(num_labels)}}
    labels["label2id"] = {name: i for i, name in labels["id2label"].items()}
    torch.manual_seed(0)
    if model_type == "eomt":
        config = EomtConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=64,
            patch_size=16, num_queries=5, num_blocks=1, num_upscale_blocks=2, **labels,
        )  # fmt: skip
        return _with_spread_heads(EomtForUniversalSegmentation(config), mask_scale=6.0)
    if model_type == "mask2former":
        config = Mask2FormerConfig(
            backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
            encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=32, num_queries=5, **labels,
        )  # fmt: skip
        return _with_spread_heads(Mask2FormerForUniversalSegmentation(config), mask_scale=6.0)
    if model_type == "oneformer":
        from transformers import OneFormerConfig, OneFormerForUniversalSegmentation

        from hfseg.models.build import load_text_tokenizer
        from hfseg.models.mask_classification import set_task_inputs

        tiny = {key: value for key, value in TINY_MASK_CLASSIFICATION["oneformer"].items() if key != "backbone_config"}
        config = OneFormerConfig(backbone_config=swin, **{**tiny, "is_training": False, "num_queries": 5}, **labels)
        set_task_inputs(config, load_text_tokenizer(str(tokenizer_dir), "--tokenizer_name_or_path", {}))
        return _with_spread_heads(OneFormerForUniversalSegmentation(config), mask_scale=30.0)
    decoder = DetrConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5,
    )  # fmt: skip
    config = MaskFormerConfig(
        backbone_config=swin, decoder_config=decoder, fpn_feature_size=32, mask_feature_size=32, num_queries=5,
        **labels,
    )  # fmt: skip
    return _with_spread_heads(MaskFormerForInstanceSegmentation(config), mask_scale=30.0)


def _with_spread_heads(model, mask_scale: float, class_scale: float = 30.0):
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("weight") and ("class_predictor" in name or "class_embed" in name):
                parameter.mul_(class_scale)
            elif name.endswith("weight") and ("mask_embed" in name or "mask_head" in name):  # each of its 3 layers
                parameter.mul_(mask_scale)
    return model


def save_tiny_mask_classification(directory, model_type, id2label: dict[int, str], tokenizer_dir=None, image_size=64):
    """A tiny random-init Mask2Former or OneFormer saved as `hfseg finetune` saves one: model, image processor
    (semantic labels, no reduction) and, for OneFormer, the CLIP tokenizer hfseg loads (padding with id 0; the
    model's config holds its task token ids)."""
    from transformers import Mask2FormerImageProcessor, OneFormerImageProcessor

    from hfseg.models.build import load_text_tokenizer

    model = tiny_mask_classification_model(model_type, len(id2label), tokenizer_dir=tokenizer_dir)
    model.config.id2label = {int(k): v for k, v in id2label.items()}
    model.config.label2id = {v: int(k) for k, v in id2label.items()}
    model.save_pretrained(directory)
    processor_class = OneFormerImageProcessor if model_type == "oneformer" else Mask2FormerImageProcessor
    processor = processor_class(
        size={"height": image_size, "width": image_size}, do_reduce_labels=False, ignore_index=255
    )
    processor.save_pretrained(directory)
    if tokenizer_dir is not None:
        load_text_tokenizer(str(tokenizer_dir), "--tokenizer_name_or_path", {}).save_pretrained(directory)
    return Path(directory)


@pytest.fixture(scope="session")
def saved_tiny_mask2former(tmp_path_factory):
    """A saved tiny Mask2Former for the synthetic classes."""
    from hfseg.data.synthetic import SYNTHETIC_ID2LABEL

    directory = tmp_path_factory.mktemp("tiny_mask2former")
    return save_tiny_mask_classification(directory, "mask2former", SYNTHETIC_ID2LABEL)


@pytest.fixture(scope="session")
def saved_tiny_oneformer(tmp_path_factory, tiny_clip_tokenizer):
    """A saved tiny OneFormer for the synthetic classes, with its tokenizer."""
    from hfseg.data.synthetic import SYNTHETIC_ID2LABEL

    directory = tmp_path_factory.mktemp("tiny_oneformer")
    return save_tiny_mask_classification(directory, "oneformer", SYNTHETIC_ID2LABEL, tiny_clip_tokenizer)
