"""GPU only (``pytest -m gpu``): flash-attention-2 vs SDPA on the same weights, bidirectional both ways."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

FLASH_ATOL = 2e-2  # bf16 unit vectors: a few bf16 ulps per dimension
FLASH_MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("flash_attn")
    return torch.device("cuda")


def _assert_kernels_agree(tiny_dir, cuda, items) -> None:
    from moca_model import MoCaEncoder

    sdpa = MoCaEncoder.from_pretrained(tiny_dir, device=cuda, attn_implementation="sdpa")
    flash = MoCaEncoder.from_pretrained(tiny_dir, device=cuda, attn_implementation="flash_attention_2")
    a = sdpa.encode(items, batch_size=4, show_progress=False)
    b = flash.encode(items, batch_size=4, show_progress=False)
    assert np.abs(a - b).max() <= FLASH_ATOL
    assert (a * b).sum(1).min() >= FLASH_MIN_COSINE


def test_flash_attention_matches_sdpa(cuda, tiny_dir):
    from PIL import Image

    def draw_image(w, h, seed):
        rng = np.random.default_rng(seed)
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    items = [
        "short",
        "a much longer query " * 8,
        draw_image(200, 120, 1),
        {"text": "\nDoc.", "image": draw_image(90, 300, 2)},
    ]
    _assert_kernels_agree(tiny_dir, cuda, items)


def test_flash_attention_is_bidirectional(cuda, tiny_dir):
    from moca_model import MoCaEncoder

    enc = MoCaEncoder.from_pretrained(tiny_dir, device=cuda, attn_implementation="flash_attention_2")
    ids = torch.tensor([enc.processor.tokenizer("a red circle on the left")["input_ids"]], device=cuda)
    with torch.inference_mode():
        a = enc.model(ids).last_hidden_state
        changed = ids.clone()
        changed[0, -1] = (changed[0, -1] + 7) % 400
        b = enc.model(changed).last_hidden_state
    assert (a[0, 0] - b[0, 0]).abs().max().item() > 0


def test_flash_attention_matches_sdpa_on_videos(cuda, tiny_dir, tmp_path):
    """Video items (the vision tower's per-frame attention, 3-D positions) under both kernels."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for clip, n in (("a", 12), ("b", 3)):
        (tmp_path / clip).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(tmp_path / clip / f"{i}.jpg")
    items = [{"text": "a clip", "video": str(tmp_path / "a")}, {"text": "short", "video": str(tmp_path / "b")},
             "plain text", {"text": " both", "video": str(tmp_path / "b"), "image": Image.new("RGB", (64, 64))}]
    _assert_kernels_agree(tiny_dir, cuda, items)
