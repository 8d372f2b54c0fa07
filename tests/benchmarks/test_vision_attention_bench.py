import json

from benchmarks import vision_attention as bench


def test_the_dry_run_measures_every_strategy_exactly(monkeypatch, tmp_path):
    """--dry-run (what gpu_check.sh --dry-run runs): a 4-block tower, 2 small pages, and the tiny MoCa's pages/s."""
    monkeypatch.setattr(bench, "FULL_BLOCKS", [1, 3])
    out = tmp_path / "va.json"
    assert bench.main(["--dry-run", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["workloads"]
    w = result["small_1page"]
    s = w["strategies"]
    # 6 + 4 windows and 2 images: the loop calls once per chunk, grouped once per length (64, 16, 4 / 2 sizes)
    assert s["stock"]["sdpa_calls"] == 2 * 10 + 2 * 2 and s["grouped"]["sdpa_calls"] == 2 * 3 + 2 * 2
    assert s["block_diagonal"]["sdpa_calls"] == 4
    assert s["grouped"]["max_abs_diff_vs_stock"] <= 1e-6 and s["block_diagonal"]["max_abs_diff_vs_stock"] <= 1e-5
    assert all(v["seconds_best"] > 0 and v["window_attention_s"] > 0 and v["full_attention_s"] > 0 for v in s.values())
    assert w["speedup_grouped_vs_stock"] > 0 and bench.TOWERS["small"]["depth"] == 32  # globals untouched
    pages = result["3b_encode"]
    assert pages["speedup_grouped_vs_stock"] > 0 and pages["max_abs_diff"] <= 1e-6


def test_block_diagonal_matches_the_chunks():
    import torch

    from moca_model.vision_attention import attend_chunks

    class Module:
        scaling = 0.25
        num_key_value_groups = 1
        is_causal = False

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(40, 2, 16, generator=g) for _ in range(3))
    cu = torch.tensor([0, 16, 24, 40], dtype=torch.int32)
    ref = attend_chunks(Module(), q, k, v, cu, sdpa_attention_forward, dropout=0.0)
    out = bench.attend_block_diagonal(Module(), q, k, v, cu, sdpa_attention_forward, dropout=0.0)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
