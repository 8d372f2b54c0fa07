"""CPT data: sources (JSONL, parquet with bytes, streaming), cached statistics, bucketing, collation."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

pytest.importorskip("datasets")

from moca_model import MoCaProcessor  # noqa: E402
from moca_model.processing_moca import IMAGE_PLACEHOLDER  # noqa: E402
from moca_train.cpt.batches import bucket_thresholds, plan_epoch  # noqa: E402
from moca_train.cpt.collator import CPTCollator, MaskingSettings  # noqa: E402
from moca_train.cpt.config import CPTSourceConfig  # noqa: E402
from moca_train.cpt.data import CPTCorpus, costs_from_stats, length_stats, open_source, stats_cache_key  # noqa: E402
from moca_train.cpt.masking import IGNORE_INDEX, special_token_ids  # noqa: E402
from moca_train.cpt.synthetic import render, write_corpus  # noqa: E402


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("cpt_data"), rows=30, seed=0)


@pytest.fixture
def processor(tiny_dir):
    return MoCaProcessor.from_pretrained(tiny_dir)


def test_costs_and_thresholds():
    stats = np.array([[10, 0, 0], [5, 16, 1], [3, 4000, 2]])  # text, image tokens, images
    assert costs_from_stats(stats, max_length=1280).tolist() == [10, 5 + 64 + 2, 1280]
    t = bucket_thresholds()
    assert t[0] == 32 and np.all(np.diff(t) > 0) and 1632 in t  # a cost-1280 row lands in the 1632 bucket


def test_plan_gives_each_rank_a_share_of_the_same_cost_bucket():
    rng = np.random.default_rng(0)
    costs = rng.integers(10, 1280, size=500)
    plan = plan_epoch(costs, token_budget=4096, world_size=4, seed=1, epoch=0)
    thresholds = bucket_thresholds()
    seen = np.concatenate(plan)
    assert len(seen) == len(np.unique(seen))  # no row twice in an epoch
    for batch in plan:
        buckets = np.searchsorted(thresholds, costs[batch])
        assert len(set(buckets.tolist())) == 1  # one bucket per global batch -> similar cost on all ranks
        shares = [batch[r::4] for r in range(4)]
        assert max(map(len, shares)) - min(map(len, shares)) <= 1 and min(map(len, shares)) >= 1
        assert len(batch) <= max(1, 4096 // thresholds[buckets[0]]) * 4
    assert [b.tolist() for b in plan] == [b.tolist() for b in plan_epoch(costs, token_budget=4096, world_size=4,
                                                                         seed=1, epoch=0)]  # fmt: skip
    other = plan_epoch(costs, token_budget=4096, world_size=4, seed=1, epoch=1)
    assert len(other) == len(plan) and [b.tolist() for b in other] != [b.tolist() for b in plan]
    strict = plan_epoch(costs, token_budget=4096, world_size=4, seed=1, epoch=0, drop_last=True)
    assert all(len(b) == max(1, 4096 // thresholds[np.searchsorted(thresholds, costs[b[0]])]) * 4 for b in strict)


def test_length_stats_cached_and_keyed_by_tokenizer_and_resize(corpus_file, processor, tmp_path):
    spec = CPTSourceConfig(path=str(corpus_file))
    ds = open_source(spec, seed=0, cache_dir=tmp_path)
    stats = length_stats(ds, spec, processor, seed=0, cache_dir=tmp_path)
    assert stats.shape == (30, 3) and len(list(tmp_path.glob("stats-*.npy"))) == 1
    row = json.loads(corpus_file.read_text().splitlines()[0])
    enc = processor.process(processor_item(row, corpus_file), 0)
    assert stats[0, 0] + stats[0, 1] + 2 * stats[0, 2] == len(enc.input_ids)  # post-resize token counts
    key = stats_cache_key(ds, spec, processor, seed=0)
    smaller = MoCaProcessor(processor.tokenizer, min_pixels=processor.min_pixels, max_pixels=16 * 28 * 28)
    assert stats_cache_key(ds, spec, smaller, seed=0) != key
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<|mask|>"]})
    assert stats_cache_key(ds, spec, processor, seed=0) != key
    assert np.array_equal(length_stats(ds, spec, processor, seed=0, cache_dir=tmp_path), stats)
    assert len(list(tmp_path.glob("stats-*.npy"))) == 2


def processor_item(row, corpus_file):
    from moca_model.processing_moca import normalize_item

    images = [str(corpus_file.parent / p) for p in row["images"]]
    return normalize_item({"text": row["text"], "images": images}, 0)


def test_parquet_with_image_bytes_and_streaming_subset(processor, tmp_path):
    import datasets

    buf = io.BytesIO()
    render("red", "circle", "left", 56).save(buf, format="PNG")
    image = {"bytes": buf.getvalue(), "path": None}
    rows = [{"text": f"{IMAGE_PLACEHOLDER}row {i}", "images": [image]} for i in range(6)]
    features = datasets.Features({"text": datasets.Value("string"), "images": datasets.List(datasets.Image())})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "data.parquet"))
    specs = [
        CPTSourceConfig(path=str(tmp_path / "data.parquet")),
        CPTSourceConfig(path=str(tmp_path / "data.parquet"), streaming=True, num_samples=4),
    ]
    corpus = CPTCorpus(specs, processor, seed=0, cache_dir=tmp_path / "cache", max_length=512)
    assert len(corpus) == 10
    assert corpus.stats[:, 1].tolist() == [4] * 10  # 56 x 56 px -> 4 merged tokens, from the header bytes
    record = corpus.record(7)
    assert isinstance(record["images"][0], bytes) and record["text"].startswith(IMAGE_PLACEHOLDER)


def _collator(processor, **kw):
    mask_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    settings = MaskingSettings(mask_token_id=mask_id, never_mask_ids=special_token_ids(processor.tokenizer), **kw)
    return CPTCollator(processor, settings)


def test_collator_aligns_mae_targets_with_image_tokens(corpus_file, processor):
    records = [json.loads(line) for line in corpus_file.read_text().splitlines()[:4]]
    for r in records:
        r["images"] = [str(corpus_file.parent / p) for p in r["images"]]
    batch = _collator(processor, p_image=0.5, pad_to_multiple_of=32)(records, generator=torch.Generator())
    ids = batch["inputs"]["input_ids"]
    n_image_tokens = int((ids == processor.image_token_id).sum())
    assert ids.shape[1] % 32 == 0
    assert batch["mae_target"].shape == (n_image_tokens, 4 * 1176) and batch["mae_mask"].shape == (n_image_tokens,)
    assert batch["inputs"]["pixel_values"].shape[0] == 4 * n_image_tokens


def test_text_only_batch_gets_masked_dummy_image_in_extra_columns(processor):
    records = [{"text": "a red circle on the left", "images": []}, {"text": "the quick brown fox", "images": []}]
    plain = processor.collate([processor.process(processor_item(r, None), 0) for r in records])
    batch = _collator(processor, p_text=0.0, pad_to_multiple_of=1)(records, generator=torch.Generator())
    ids, attn = batch["inputs"]["input_ids"], batch["inputs"]["attention_mask"]
    t = plain["input_ids"].shape[1]
    assert torch.equal(ids[:, :t], plain["input_ids"]) and torch.equal(attn[:, :t], plain["attention_mask"])
    assert ids[0, t:].tolist() == [processor.vision_start_id, processor.image_token_id, processor.vision_end_id]
    assert attn[:, t:].sum() == 0 and (batch["mlm_labels"][:, t:] == IGNORE_INDEX).all()
    assert batch["inputs"]["pixel_values"].shape == (4, 1176) and batch["inputs"]["image_grid_thw"].tolist() == [
        [1, 2, 2]
    ]
    assert batch["mae_target"].shape[0] == 0  # the dummy is never a reconstruction target
