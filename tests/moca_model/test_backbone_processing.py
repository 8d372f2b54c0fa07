"""Processing per backbone equals the stock processor of that backbone, token for token and pixel for pixel.

The stock processor is the backbone's own ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor``
with the PIL image processor the toolkit uses on both lines (environment-notes.md: the reference's). On
transformers 5 it is ``AutoProcessor.from_pretrained(checkpoint)`` with that image processor (and, for
Qwen3-VL, its ``Qwen3VLVideoProcessor``); on 4.57 without torchvision no stock processor can be constructed
(its video processor needs torchvision), so the stock class is instantiated around the checkpoint's
tokenizer and image processor without its constructor's type checks, and runs its own ``__call__``.

Images are handed to the stock processor after MoCa's documented input normalisation (``to_rgb``: RGB,
16-bit rescaled from its range, sides under one visual token stretched, aspect ratios over 200 padded),
which the stock processor lacks (it clips 16-bit images to white, upsamples tiny ones in one step and
refuses very wide ones); plain 8-bit RGB, grey and palette images go in as they are.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from moca_model import backbones
from moca_model.compat import TRANSFORMERS_MAJOR, pil_image_processor_class
from moca_model.images import to_rgb
from moca_model.processing_moca import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, MoCaProcessor, normalize_item
from moca_model.video import Video

from .conftest import draw_image

STOCK = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}


def stock_processor(path, backbone):
    """The backbone's stock processor around the checkpoint's tokenizer and PIL image processor."""
    import transformers

    image_processor = pil_image_processor_class().from_pretrained(path)
    if TRANSFORMERS_MAJOR >= 5:
        proc = transformers.AutoProcessor.from_pretrained(path)
        assert type(proc).__name__ == STOCK[backbone]
        proc.image_processor = image_processor
        if backbone == "qwen3_vl":  # tiny checkpoints ship no video_preprocessor_config.json
            spec = backbones.get(backbone)
            proc.video_processor = transformers.Qwen3VLVideoProcessor(
                patch_size=spec.patch_size, image_mean=list(spec.image_mean), image_std=list(spec.image_std)
            )
        return proc
    proc = object.__new__(getattr(transformers, STOCK[backbone]))  # 4.57 without torchvision: no constructor
    proc.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    proc.image_processor, proc.video_processor, proc.chat_template = image_processor, None, None
    proc.image_token, proc.video_token = "<|image_pad|>", "<|video_pad|>"
    proc.vision_start_token, proc.vision_end_token = "<|vision_start|>", "<|vision_end|>"
    proc.image_token_id = proc.tokenizer.convert_tokens_to_ids(proc.image_token)
    proc.video_token_id = proc.tokenizer.convert_tokens_to_ids(proc.video_token)
    return proc


def odd_images():
    """(name, image, what the stock processor is given)."""
    rng = np.random.default_rng(0)
    rgb = draw_image(150, 100, 1)
    grey = draw_image(90, 130, 2).convert("L")
    palette = draw_image(120, 80, 3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    deep = Image.fromarray(rng.integers(0, 4096, (60, 70), dtype=np.uint16))  # 12 bits used of 16
    deep = deep.convert("I;16") if deep.mode != "I;16" else deep
    tiny = draw_image(9, 12, 4)
    wide = draw_image(1800, 6, 5)  # aspect 300
    very_wide = draw_image(4200, 33, 6)  # aspect 127: the stock processor still takes it
    return [("rgb", rgb, rgb), ("grey", grey, grey), ("palette", palette, palette), ("very wide", very_wide, very_wide),
            ("16-bit", deep, None), ("tiny", tiny, None), ("aspect 300", wide, None)]  # fmt: skip


@pytest.mark.parametrize("backbone", backbones.BACKBONES)
def test_text_and_images_equal_the_stock_processor(tiny_backbone_dirs, backbone):
    path = tiny_backbone_dirs(backbone)
    ours = MoCaProcessor.from_pretrained(path)
    assert ours.backbone == backbone and ours.factor == backbones.get(backbone).factor
    stock = stock_processor(path, backbone)
    text = "Represent the given image with the following question: what colour is it?\n"
    enc = ours.process(normalize_item(text, 0), 0)
    assert enc.input_ids == stock(text=[text])["input_ids"][0]
    worst = 0.0
    for name, image, given in odd_images():
        given = given if given is not None else to_rgb(image, 0, min_side=ours.factor)
        enc = ours.process(normalize_item({"text": text, "image": image}, 0), 0)
        ref = stock(text=[IMAGE_PLACEHOLDER + text], images=[given], return_tensors="pt")
        assert enc.input_ids == ref["input_ids"][0].tolist(), name
        assert torch.equal(enc.image_grid_thw, ref["image_grid_thw"]), name
        torch.testing.assert_close(enc.pixel_values, ref["pixel_values"], rtol=0, atol=1e-6, msg=name)
        worst = max(worst, (enc.pixel_values - ref["pixel_values"]).abs().max().item())
    print(f"{backbone}: text + 7 images equal the stock processor's tokens; pixels max |diff| {worst:.1e}")
    assert enc.pixel_values.shape[1] == backbones.get(backbone).row_size  # 1176, or 1536 on Qwen3-VL


def test_two_images_interleaved_equal_the_stock_processor(tiny_backbone_dirs):
    path = tiny_backbone_dirs("qwen3_vl")
    ours, stock = MoCaProcessor.from_pretrained(path), stock_processor(path, "qwen3_vl")
    a, b = draw_image(64, 96, 1), draw_image(130, 40, 2)
    text = f"compare {IMAGE_PLACEHOLDER} with {IMAGE_PLACEHOLDER} please"
    enc = ours.process(normalize_item({"text": text, "images": [a, b]}, 0), 0)
    ref = stock(text=[text], images=[a, b], return_tensors="pt")
    assert enc.input_ids == ref["input_ids"][0].tolist()
    torch.testing.assert_close(enc.pixel_values, ref["pixel_values"], rtol=0, atol=1e-6)


def _frames(n, size=(96, 64), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize(("n_frames", "fps", "size"), [(8, None, (96, 64)), (5, 8.0, (150, 70)), (16, 2.0, (40, 40))])
def test_qwen3_video_timestamps_tokens_and_pixels_equal_the_stock_processor(tiny_backbone_dirs, n_frames, fps, size):
    """Qwen3-VL video: ``<t seconds>`` per temporal patch as its processor renders them; rows equal its processor's."""
    from transformers.video_utils import VideoMetadata

    path = tiny_backbone_dirs("qwen3_vl")
    ours, stock = MoCaProcessor.from_pretrained(path), stock_processor(path, "qwen3_vl")
    frames = _frames(n_frames, size)
    video = Video(tuple(frames), fps=fps)
    enc = ours.process(normalize_item({"text": "what happens?", "video": video}, 0), 0)
    text = ours.tokenizer.decode(enc.input_ids)
    assert text.startswith(f"<{0.5 / (fps or 24.0):.1f} seconds><|vision_start|><|video_pad|>")
    assert text.count("seconds>") == enc.video_grid_thw[0, 0] == -(-n_frames // 2)
    assert ours.estimate_length(normalize_item({"text": "what happens?", "video": video}, 0), 0) == len(enc.input_ids)
    metadata = VideoMetadata(total_num_frames=n_frames, fps=fps, frames_indices=list(range(n_frames)))
    if TRANSFORMERS_MAJOR < 5:  # no torchvision: the stock text rendering, fed our rows and grid
        stock.video_processor = _StubVideoProcessor(enc, metadata)
        ref = stock(text=[VIDEO_PLACEHOLDER + "what happens?"], videos=[frames], return_tensors="pt")
        assert enc.input_ids == ref["input_ids"][0].tolist()
        return
    lo, hi = ours.video_min_pixels * n_frames, ours.video_max_pixels * n_frames  # per-frame bounds x frames
    # 5.x renders a bare <|video_pad|> as 4.57 renders the vision_start/pad/end triple (see _render_videos)
    ref = stock(text=["<|video_pad|>what happens?"], videos=[frames], video_metadata=[metadata], return_tensors="pt",
                do_sample_frames=False, size={"shortest_edge": lo, "longest_edge": hi}, cap_pixels_per_frame=False)
    assert enc.input_ids == ref["input_ids"][0].tolist()
    assert torch.equal(enc.video_grid_thw, ref["video_grid_thw"])
    torch.testing.assert_close(enc.pixel_values_videos, ref["pixel_values_videos"], rtol=0, atol=1e-6)
    diff = (enc.pixel_values_videos - ref["pixel_values_videos"]).abs().max().item()
    print(f"qwen3_vl video {n_frames} frames: tokens equal, pixels max |diff| {diff:.1e}")


class _StubVideoProcessor:
    """Hands the stock processor our rows, grid and the clip's metadata (4.57 has no torchvision here)."""

    merge_size = temporal_patch_size = 2

    def __init__(self, enc, metadata):
        self.out = {"pixel_values_videos": enc.pixel_values_videos, "video_grid_thw": enc.video_grid_thw,
                    "video_metadata": [metadata]}  # fmt: skip

    def __call__(self, videos, **kwargs):
        return dict(self.out)


def test_pixel_bounds_are_in_each_backbones_units(tiny_backbone_dirs):
    """MoCa's 256..1,024 visual tokens per image: 28² px per token on Qwen2/2.5-VL, 32² on Qwen3-VL."""
    from moca_model.testing import tiny_tokenizer

    for backbone, factor in (("qwen2_vl", 28), ("qwen2_5_vl", 28), ("qwen3_vl", 32)):
        proc = MoCaProcessor(tiny_tokenizer(), backbone=backbone)
        assert (proc.min_pixels, proc.max_pixels) == (256 * factor**2, 1024 * factor**2)
        assert (proc.video_min_pixels, proc.video_max_pixels) == (128 * factor**2, 256 * factor**2)
        for size in ((64, 64), (1600, 2400), (1000, 700)):
            enc = proc.process(normalize_item(draw_image(*size), 0), 0)
            assert 256 <= enc.input_ids.count(proc.image_token_id) <= 1024, (backbone, size)


def test_truncation_drops_a_qwen3_video_whole_with_its_timestamp(tiny_backbone_dirs):
    path = tiny_backbone_dirs("qwen3_vl")
    full = MoCaProcessor.from_pretrained(path).process(
        normalize_item({"text": "clip", "video": Video(tuple(_frames(6)))}, 0), 0
    )
    short = MoCaProcessor.from_pretrained(path, max_length=len(full.input_ids) - 3)
    item = normalize_item({"text": f"{IMAGE_PLACEHOLDER} then {VIDEO_PLACEHOLDER} end", "image": draw_image(40, 40),
                           "video": Video(tuple(_frames(6)))}, 0)  # fmt: skip
    enc = short.process(item, 0)
    assert enc.video_grid_thw is None and enc.image_grid_thw is not None
    assert "seconds" not in short.tokenizer.decode(enc.input_ids)
    assert short.tokenizer.decode(enc.input_ids).endswith(" then ")
