from benchmarks import run


def test_summary_renders_the_throughput_results():
    text = run.summary()  # from the committed results/benchmarks/*.json
    for title in ("Embedding cache on a ViDoRe-v3-shaped mteb task", "vidore-benchmark rerun", "Data-parallel"):
        assert title in text
    assert "| with cache | 32 | 1.0 |" in text and "| warm | 0 | 32 |" in text
