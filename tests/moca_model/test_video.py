"""Video inputs: frame folders and sampling as the MMEB-V2 reference, patch rows, positions, batching."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from moca_model.compat import TRANSFORMERS_MAJOR, pil_image_processor_class, video_rope_index
from moca_model.images import MoCaInputError
from moca_model.patchify import patchify
from moca_model.processing_moca import VIDEO_PLACEHOLDER, MoCaProcessor, normalize_item
from moca_model.testing import tiny_tokenizer
from moca_model.video import Video, list_frames, patchify_video, sample_frames, video_key

from .conftest import draw_image


def _write_frames(folder, names, size=(80, 60), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    long = _write_frames(root / "long", [f"frame_{i}.jpg" for i in range(1, 13)], seed=1)  # 12 frames
    short = _write_frames(root / "short", ["0000.jpeg", "0001.jpeg", "0002.jpeg"], size=(50, 90), seed=2)
    return {"long": long, "short": short, "root": root}


def test_frames_are_natural_sorted_and_filtered(tmp_path):
    folder = _write_frames(tmp_path / "v", ["frame_10.jpg", "frame_2.JPG", "frame_1.png", "x.gif"])
    (folder / "notes.txt").write_text("not a frame")
    (folder / "sub.jpg").mkdir()  # a folder named like a frame is not a frame
    assert [p.name for p in list_frames(folder)] == ["frame_1.png", "frame_2.JPG", "frame_10.jpg"]
    assert list_frames(tmp_path / "missing") == []


def test_sampling_is_the_references_linspace():
    frames = list(range(12))
    # np.linspace(0, 11, 8) = 0, 1.57, 3.14, 4.71, 6.29, 7.86, 9.43, 11 -> truncated to int
    assert sample_frames(frames, 8) == [0, 1, 3, 4, 6, 7, 9, 11]
    assert sample_frames(frames, 12) == frames and sample_frames(frames, None) == frames
    assert sample_frames(frames[:5], 8) == frames[:5]  # fewer saved frames: all of them, as saved
    assert sample_frames(frames[:5], 8, short_clips="pad") == [0, 1, 2, 3, 4, 4, 4, 4]
    with pytest.raises(ValueError, match="num_frames"):
        sample_frames(frames, 0)


def test_folder_item_samples_and_list_item_is_used_as_given(clips):
    folder = normalize_item({"text": "a video", "video": str(clips["long"])}, 0)
    files = list_frames(clips["long"])
    assert folder.videos[0].frames == tuple(str(files[i]) for i in (0, 1, 3, 4, 6, 7, 9, 11))
    assert folder.text == VIDEO_PLACEHOLDER + "a video"
    given = normalize_item({"text": "a video", "video": [str(f) for f in files]}, 0)
    assert len(given.videos[0].frames) == 12
    four = normalize_item({"video": str(clips["long"]), "num_frames": 4}, 0)
    assert len(four.videos[0].frames) == 4
    with pytest.raises(MoCaInputError, match="item 3"):
        normalize_item({"video": 42}, 3)


@pytest.mark.skipif(TRANSFORMERS_MAJOR >= 5, reason="the 5.x PIL image processor has no video path")
def test_video_rows_equal_the_upstream_qwen2vl_video_path(clips):
    frames = [Image.open(f).convert("RGB") for f in list_frames(clips["long"])[:5]]  # odd: last frame repeated
    lo, hi = 4 * 784, 32 * 784
    ip = pil_image_processor_class()(min_pixels=lo, max_pixels=hi)
    kw = {"min_pixels": lo, "max_pixels": hi, "mean": tuple(ip.image_mean), "std": tuple(ip.image_std)}
    ref = ip(images=None, videos=[frames], return_tensors="pt")
    rows, grid = patchify_video(frames, **kw)
    assert torch.equal(grid, ref["video_grid_thw"]) and grid[0, 0] == 3
    torch.testing.assert_close(rows, ref["pixel_values_videos"], rtol=0, atol=2e-6)
    frames[2] = frames[2].resize((100, 40))  # every frame is resized to the FIRST frame's target size
    ref_rows, ref_grid = ip._preprocess(frames, do_resize=True, size=ip.size, resample=ip.resample, do_rescale=True,
                                        rescale_factor=ip.rescale_factor, do_normalize=True, image_mean=ip.image_mean,
                                        image_std=ip.image_std, patch_size=14, temporal_patch_size=2, merge_size=2,
                                        do_convert_rgb=True)  # fmt: skip
    rows, grid = patchify_video(frames, **kw)
    assert grid[0].tolist() == list(ref_grid)
    torch.testing.assert_close(rows, torch.from_numpy(ref_rows).float(), rtol=0, atol=2e-6)


def test_a_still_video_has_the_image_rows_at_every_time_step():
    img = draw_image(90, 70, seed=4)
    ip = pil_image_processor_class()()
    kw = {"min_pixels": 4 * 784, "max_pixels": 32 * 784, "mean": tuple(ip.image_mean), "std": tuple(ip.image_std)}
    image_rows, image_grid = patchify(img, **kw)
    video_rows, video_grid = patchify_video([img] * 4, **kw)
    assert video_grid.tolist() == [[2, *image_grid[0, 1:].tolist()]]
    torch.testing.assert_close(video_rows, torch.cat([image_rows, image_rows]), rtol=0, atol=0)


def test_a_short_clip_is_encoded_with_its_saved_frames(tiny_encoder, clips):
    proc = tiny_encoder.processor
    item = normalize_item({"text": "clip", "video": str(clips["short"])}, 0)  # 3 saved frames, 8 requested
    assert len(item.videos[0].frames) == 3
    enc = proc.process(item, 0)
    assert enc.video_grid_thw[0, 0] == 2  # 3 frames -> the last is repeated to an even count -> 2 temporal patches
    assert proc.estimate_length(item, 0) == len(enc.input_ids)
    n_video = enc.input_ids.count(proc.video_token_id)
    assert n_video * 4 == enc.pixel_values_videos.shape[0] and enc.pixel_values is None


def test_missing_and_empty_videos_name_the_item(tiny_encoder, clips, tmp_path):
    proc = tiny_encoder.processor
    with pytest.raises(MoCaInputError, match=r"item 2: video has no frames: .*empty"):
        proc.estimate_length(normalize_item({"video": str(tmp_path / "empty")}, 2), 2)
    frames = [str(f) for f in list_frames(clips["short"])] + [str(tmp_path / "gone.jpg")]
    with pytest.raises(MoCaInputError, match="item 5: image file not found"):
        proc.estimate_length(normalize_item({"video": frames}, 5), 5)


def test_truncation_drops_a_video_whole(caplog, clips):
    proc = MoCaProcessor(tiny_tokenizer(), min_pixels=4 * 784, max_pixels=16 * 784, video_min_pixels=4 * 784,
                         video_max_pixels=16 * 784, max_length=30)  # fmt: skip
    item = normalize_item({"text": f"words {VIDEO_PLACEHOLDER} more words", "image": draw_image(56, 56),
                           "video": str(clips["long"])}, 1)  # fmt: skip
    with caplog.at_level(logging.WARNING):
        enc = proc.process(item, 1)
    assert len(enc.input_ids) <= 30 and "dropped 1" in caplog.text
    assert proc.video_token_id not in enc.input_ids and enc.video_grid_thw is None
    assert enc.image_grid_thw.shape == (1, 3)
    proc.max_length = 10
    with pytest.raises(MoCaInputError, match="item 1"):
        proc.process(normalize_item({"video": str(clips["long"])}, 1), 1)


def test_video_positions_by_hand():
    # text(2) | video t=2, 2x4 patches (merge 2 -> 1x2) | text(1); tokens_per_second 3 -> temporal step 3
    v, s = 7, 5
    ids = torch.tensor([[1, s, v, v, v, v, 9, 2]])
    pos = video_rope_index(ids, torch.ones_like(ids), None, torch.tensor([[2, 2, 4]]), image_token_id=6,
                           video_token_id=v, merge_size=2, tokens_per_second=3)  # fmt: skip
    assert pos[:, 0].tolist() == [[0, 1, 2, 2, 5, 5, 6, 7],  # text resumes after the video's last temporal position
                                  [0, 1, 2, 2, 2, 2, 6, 7],
                                  [0, 1, 2, 3, 2, 3, 6, 7]]  # fmt: skip


@pytest.mark.skipif(TRANSFORMERS_MAJOR >= 5, reason="5.x get_rope_index resumes text at max(h, w), see compat.py")
def test_video_positions_equal_upstream_4x(tiny_encoder, clips):
    proc, model = tiny_encoder.processor, tiny_encoder.model
    items = [{"text": "first", "video": str(clips["long"])}, "plain text",
             {"text": f"{VIDEO_PLACEHOLDER} between <|vision_start|><|image_pad|><|vision_end|> end",
              "video": str(clips["short"]), "image": draw_image(70, 50)}]  # fmt: skip
    batch = proc.collate([proc.process(normalize_item(x, i), i) for i, x in enumerate(items)])
    ref, _ = model.get_rope_index(batch["input_ids"], batch["image_grid_thw"], batch["video_grid_thw"],
                                  attention_mask=batch["attention_mask"])  # fmt: skip
    ours = video_rope_index(batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"],
                            batch["video_grid_thw"], image_token_id=proc.image_token_id,
                            video_token_id=proc.video_token_id, merge_size=2,
                            tokens_per_second=model.config.vision_config.tokens_per_second)  # fmt: skip
    assert torch.equal(ours, ref)


def test_causal_video_forward_matches_stock_qwen(tiny_model_and_processor, clips):
    from transformers import Qwen2_5_VLModel

    model, proc = tiny_model_and_processor
    model.set_bidirectional(False)
    stock = Qwen2_5_VLModel._from_config(model.config, attn_implementation="sdpa").eval()
    stock.load_state_dict(model.state_dict())
    items = [{"text": "a clip", "video": str(clips["short"])}, {"text": "and an image", "image": draw_image(60, 60)}]
    inputs = proc.collate([proc.process(normalize_item(x, i), i) for i, x in enumerate(items)])
    with torch.no_grad():
        ours = model(**inputs)
        positions = video_rope_index(inputs["input_ids"], inputs["attention_mask"], inputs["image_grid_thw"],
                                     inputs["video_grid_thw"], image_token_id=proc.image_token_id,
                                     video_token_id=proc.video_token_id, merge_size=2,
                                     tokens_per_second=model.config.vision_config.tokens_per_second)  # fmt: skip
        ref = stock(**inputs, position_ids=positions).last_hidden_state
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours.last_hidden_state[real], ref[real], rtol=0, atol=1e-6)


@pytest.fixture
def video_items(clips, tmp_path):
    copy = tmp_path / "copy"  # the same frames under another folder and other names
    copy.mkdir()
    for i, f in enumerate(list_frames(clips["long"])):
        (copy / f"img{i:03d}.jpg").write_bytes(f.read_bytes())
    return [
        {"text": "a video of shapes", "video": str(clips["long"])},
        "a text query",
        {"text": "a short clip", "video": str(clips["short"])},
        {"text": "\nRepresent the given image.", "image": draw_image(90, 60, 3)},
        {"text": "same frames, other folder", "video": str(copy)},
        {"text": "four frames", "video": str(clips["long"]), "num_frames": 4},
        {"video": Video(tuple(str(f) for f in list_frames(clips["short"]))[::-1])},
        "another text, a bit longer than the first one",
    ]


def test_video_batch_order_and_size_invariance(tiny_encoder, video_items):
    together = tiny_encoder.encode(video_items, batch_size=8, show_progress=False)
    alone = np.stack([tiny_encoder.encode([x], show_progress=False)[0] for x in video_items])
    assert np.abs(together - alone).max() <= 1e-5
    perm = np.random.default_rng(0).permutation(len(video_items))
    shuffled = tiny_encoder.encode([video_items[i] for i in perm], batch_size=3, show_progress=False)
    assert np.abs(shuffled - together[perm]).max() <= 1e-5
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.abs(together[0] - together[5]).max() > 1e-4  # 8 vs 4 frames of one folder are different inputs
    assert np.abs(together[2] - together[6]).max() > 1e-4  # frame order matters


def test_videos_are_keyed_by_frame_content(tiny_encoder, video_items, monkeypatch):
    first, copy = (normalize_item(video_items[i], i) for i in (0, 4))
    assert video_key(first.videos[0]) == video_key(copy.videos[0])
    calls, forward = [], tiny_encoder.forward_batch
    monkeypatch.setattr(tiny_encoder, "forward_batch", lambda x: calls.append(len(x["input_ids"])) or forward(x))
    twice = [{"text": "x", "video": video_items[0]["video"]}, {"text": "x", "video": video_items[4]["video"]}]
    out = tiny_encoder.encode(twice, show_progress=False)
    assert sum(calls) == 1 and np.array_equal(out[0], out[1])


def test_video_sdpa_and_eager_agree(tiny_dir, video_items):
    from moca_model import MoCaEncoder

    sdpa = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attn_implementation="sdpa")
    eager = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attn_implementation="eager")
    a = sdpa.encode(video_items, batch_size=3, show_progress=False)
    b = eager.encode(video_items, batch_size=5, show_progress=False)
    assert np.abs(a - b).max() <= 1e-5


def test_a_damaged_frame_is_dropped_and_the_video_kept(tiny_encoder, tmp_path, caplog):
    """As the MMEB-V2 reference's image processor: a frame whose pixels cannot be decoded is skipped."""
    import logging

    from moca_model import MoCaInputError

    rng = np.random.default_rng(0)
    frames = []
    for i in range(4):
        path = tmp_path / f"frame_{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path, quality=90)
        frames.append(path)
    damaged = tmp_path / "damaged.jpg"
    jpeg = frames[1].read_bytes()
    damaged.write_bytes(jpeg[: jpeg.index(b"\xff\xda") + 20])  # the header reads (up to start of scan), pixels cut
    with caplog.at_level(logging.WARNING, logger="moca_model.video"):
        got = tiny_encoder.encode([{"text": "clip", "video": [frames[0], damaged, frames[2], frames[3]]}])
    want = tiny_encoder.encode([{"text": "clip", "video": [frames[0], frames[2], frames[3]]}])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert "dropped 1 damaged frame" in caplog.text and "damaged.jpg" in caplog.text
    with pytest.raises(MoCaInputError, match="item 0: no frame of video .* decodes"):
        tiny_encoder.encode([{"text": "clip", "video": [damaged, damaged]}])
