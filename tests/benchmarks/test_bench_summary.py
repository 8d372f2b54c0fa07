import re

from benchmarks import run


def test_summary_renders_the_throughput_results():
    text = run.summary()  # from the committed results/benchmarks/*.json
    for title in ("Embedding cache on a ViDoRe-v3-shaped mteb task", "vidore-benchmark rerun", "Data-parallel"):
        assert title in text
    assert re.search(r"\| without cache \| \d+ \| 6\.0 \|", text)  # the corpus once per language
    assert re.search(r"\| with cache \| \d+ \| 1\.0 \|", text)  # ... and once in all
    assert re.search(r"\| warm \| 0 \| \d+ \|", text)  # a warm vidore rerun runs no page


def test_summary_renders_the_vision_attention_calls():
    text = run.summary()
    assert "## Vision attention per vision forward" in text
    assert re.search(r"\| small \| 12288 \| stock \| 5392 \|", text)  # the 4 pages, one call per window
    assert re.search(r"\| small \| 12288 \| grouped \| 32 \|", text)  # one call per block
    assert "ours on the stock vision loop" in text


def test_summary_renders_the_bounded_memory_benchmark():
    """Issue 24: one encode call over 1,000 page images keeps a bounded number of prepared batches."""
    import json

    text = run.summary()
    assert "Peak host memory of one encode call over 1000 page images" in text
    r = json.loads((run.RESULTS / "encode_memory.json").read_text())
    before, after = r["runs"][0], r["runs"][1]
    assert before["variant"] == "before" and after["variant"] == "after" and before["pages"] == after["pages"] == 1000
    assert before["max_live_prepared_batches"] == before["batches"]  # the old prefetcher kept every batch
    assert after["max_live_prepared_batches"] <= 3 and after["growth_mb"] < before["growth_mb"] / 4
    assert r["same_vectors"] and "Weights fingerprint per encode call" in text
