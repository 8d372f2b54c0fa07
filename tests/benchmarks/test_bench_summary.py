import re

from benchmarks import run


def test_summary_renders_the_throughput_results():
    text = run.summary()  # from the committed results/benchmarks/*.json
    for title in ("Embedding cache on a ViDoRe-v3-shaped mteb task", "vidore-benchmark rerun", "Data-parallel"):
        assert title in text
    assert re.search(r"\| without cache \| \d+ \| 6\.0 \|", text)  # the corpus once per language
    assert re.search(r"\| with cache \| \d+ \| 1\.0 \|", text)  # ... and once in all
    assert re.search(r"\| warm \| 0 \| \d+ \|", text)  # a warm vidore rerun runs no page
