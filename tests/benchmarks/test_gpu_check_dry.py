import json

from benchmarks.gpu_check import main


def test_gpu_check_dry_run_writes_a_result(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--dry-run", "--queries", "4", "--pages", "2", "--page-side", "112", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    sdpa = result["backends"]["sdpa"]
    assert sdpa["items_per_s"] > 0 and sdpa["tokens"] > 0 and result["n_params"] > 0
    pages = result["pages"]
    assert pages["sdpa_4d_mask"]["pages_per_s"] > 0 and pages["sdpa_fast_path"]["pages_per_s"] > 0
    assert pages["devices"]["list"] == ["cpu", "cpu"] and pages["devices"]["pool"]["pages_per_s"] > 0
    vision = result["vision_attention_pages"]  # issue 25: the stock per-window loop vs batched windows
    assert vision["speedup"] > 0 and vision["max_abs_diff"] <= 1e-6
