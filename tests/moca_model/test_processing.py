import logging

import pytest
import torch
from PIL import Image

from moca_model.images import MoCaInputError
from moca_model.processing_moca import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    IMAGE_PLACEHOLDER,
    MoCaProcessor,
    normalize_item,
)
from moca_model.testing import tiny_tokenizer

from .conftest import draw_image


@pytest.fixture(scope="module")
def paper_processor():
    """Processor with MoCa's paper defaults (256..1024 visual tokens, max_length 1280)."""
    return MoCaProcessor(tiny_tokenizer())


def test_defaults_are_the_papers(paper_processor):
    assert (paper_processor.min_pixels, paper_processor.max_pixels) == (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS)
    assert paper_processor.max_length == 1280
    assert DEFAULT_MIN_PIXELS == 256 * 28 * 28 and DEFAULT_MAX_PIXELS == 1024 * 28 * 28


@pytest.mark.parametrize(
    ("size", "lo", "hi"), [((64, 64), 256, 300), ((3000, 4000), 900, 1024), ((1000, 700), 256, 1024)]
)
def test_visual_token_count_stays_within_bounds(paper_processor, size, lo, hi):
    enc = paper_processor.process(normalize_item(draw_image(*size), 0), 0)
    n = sum(1 for t in enc.input_ids if t == paper_processor.image_token_id)
    assert lo <= n <= hi
    assert n == int(enc.image_grid_thw.prod()) // 4  # merge 2x2
    assert enc.pixel_values.shape == (4 * n, 1176)
    assert n == paper_processor.num_image_tokens(size[1], size[0])


def test_image_first_no_chat_template_no_eos(paper_processor):
    item = normalize_item({"text": "\nRepresent the given image.", "image": draw_image(56, 56)}, 0)
    assert item.text == IMAGE_PLACEHOLDER + "\nRepresent the given image."
    ids = paper_processor.process(item, 0).input_ids
    tok = paper_processor.tokenizer
    assert ids[0] == paper_processor.vision_start_id
    assert tok.decode(ids[-6:]).endswith("image.")  # no EOS appended
    assert tok.convert_tokens_to_ids("<|im_start|>") not in ids


def test_phi3_placeholder_rewritten_and_stray_placeholder_removed(caplog):
    item = normalize_item({"text": "<|image_1|>\nRepresent the given image.", "image": draw_image(30, 30)}, 0)
    assert item.text.startswith(IMAGE_PLACEHOLDER) and item.text.count(IMAGE_PLACEHOLDER) == 1
    with caplog.at_level(logging.WARNING):
        item = normalize_item({"text": "<|image_1|> a caption"}, 3)
    assert IMAGE_PLACEHOLDER not in item.text and "item 3" in caplog.text


def test_placeholder_count_mismatch_names_item():
    with pytest.raises(MoCaInputError, match="item 5"):
        normalize_item({"text": f"{IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER}", "images": [draw_image(30, 30)]}, 5)


def test_interleaved_images_in_text_order(tiny_encoder):
    proc = tiny_encoder.processor
    a, b = draw_image(56, 56, 1), draw_image(112, 56, 2)
    item = normalize_item({"text": f"first {IMAGE_PLACEHOLDER} then {IMAGE_PLACEHOLDER}", "images": [a, b]}, 0)
    enc = proc.process(item, 0)
    assert enc.image_grid_thw.tolist() == [[1, 4, 4], [1, 4, 8]]
    runs = [sum(1 for _ in g) for k, g in __import__("itertools").groupby(enc.input_ids) if k == proc.image_token_id]
    assert runs == [4, 8]


def test_estimate_length_equals_processed_length(tiny_encoder, mixed_items):
    proc = tiny_encoder.processor
    for i, x in enumerate(mixed_items):
        item = normalize_item(x, i)
        assert proc.estimate_length(item, i) == len(proc.process(item, i).input_ids)


def test_truncation_never_splits_an_image(caplog):
    proc = MoCaProcessor(tiny_tokenizer(), min_pixels=4 * 784, max_pixels=16 * 784, max_length=30)
    text = f"{IMAGE_PLACEHOLDER} some words here {IMAGE_PLACEHOLDER} more words"
    item = normalize_item({"text": text, "images": [draw_image(56, 56, 1), draw_image(112, 112, 2)]}, 7)
    with caplog.at_level(logging.WARNING):
        enc = proc.process(item, 7)
    assert len(enc.input_ids) <= 30 and "item 7" in caplog.text
    n_start = enc.input_ids.count(proc.vision_start_id)
    assert n_start == enc.input_ids.count(proc.vision_end_id) == len(enc.image_grid_thw) == 1
    assert enc.input_ids.count(proc.image_token_id) * 4 == enc.pixel_values.shape[0]


def test_text_truncated_to_max_length():
    proc = MoCaProcessor(tiny_tokenizer(), max_length=50)
    enc = proc.process(normalize_item("word " * 1000, 0), 0)
    assert len(enc.input_ids) == 50


def test_collate_right_pads_and_orders_pixels(tiny_encoder):
    proc = tiny_encoder.processor
    encs = [proc.process(normalize_item(x, i), i) for i, x in enumerate(["a b c d e f", draw_image(56, 56), "z"])]
    batch = proc.collate(encs)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][2].tolist()[:2] == [1, 0] or batch["attention_mask"][2, 0] == 1
    assert torch.all(batch["input_ids"][batch["attention_mask"] == 0] == proc.pad_id)
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())


def test_save_and_reload_keeps_settings(tmp_path):
    proc = MoCaProcessor(tiny_tokenizer(), min_pixels=8 * 784, max_pixels=32 * 784, max_length=99)
    proc.save_pretrained(tmp_path)
    again = MoCaProcessor.from_pretrained(tmp_path)
    assert (again.min_pixels, again.max_pixels, again.max_length) == (8 * 784, 32 * 784, 99)
    assert MoCaProcessor.from_pretrained(tmp_path, max_length=7).max_length == 7
    with pytest.raises(ValueError, match="min_pixels"):
        MoCaProcessor(tiny_tokenizer(), min_pixels=10, max_pixels=5)


def test_image_only_mapping_and_pil_item_are_the_same():
    img = Image.new("RGB", (40, 40))
    assert normalize_item(img, 0) == normalize_item({"image": img}, 0)
