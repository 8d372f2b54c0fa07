"""MMEB-V2: two forked gloo ranks (CPU, the real tiny model) give the same scores, counts and vectors as one process."""

from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np
import pytest

from moca_bench.mmeb import run
from moca_bench.mmeb.config import MMEBConfig
from moca_bench.mmeb.v2.synthetic import write_v2_sample

from .test_mmeb_dist import _free_port

TASKS = ["OK-VQA", "WebQA", "MSR-VTT", "MomentSeeker", "Video-MME", "ViDoRe_esg_reports_human_labeled_v2"]
KEEP = ("score", "scores_by_tie_rule", "rows", "scored_rows", "bad_rows", "dropped_rows", "bad_items", "bad_examples",
        "tied_rows", "unique_items", "encoded_items", "pool_size")  # fmt: skip


def _cfg(tiny_dir, data, tmp, tag) -> MMEBConfig:
    return MMEBConfig(model=str(tiny_dir), benchmark="v2", data_dir=str(data / "hub"), image_root=str(data / "data"),
                      device="cpu", progress=False, model_name="m", subsets=TASKS, output_dir=str(tmp / f"out{tag}"),
                      cache_dir=str(tmp / f"cache{tag}"))  # fmt: skip


def _rank_main(rank: int, port: int, cfg: MMEBConfig, encoder) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})  # fmt: skip
    run(cfg, encoder=encoder)


def test_two_forked_gloo_ranks_match_one_process(tiny_dir, tiny_encoder, tmp_path):
    import torch.distributed as dist
    from safetensors.numpy import load_file

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process; forked ranks would inherit it")
    data = write_v2_sample(tmp_path / "data", bad_media=True)  # bad inputs must travel through the gather too
    ctx, port = multiprocessing.get_context("fork"), _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, _cfg(tiny_dir, data, tmp_path, 2), tiny_encoder))
             for r in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():  # a hung collective must fail the test, not the suite
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    two = json.loads((tmp_path / "out2" / "m" / "mmeb_v2.json").read_text())
    one = run(_cfg(tiny_dir, data, tmp_path, 1), encoder=tiny_encoder)
    assert (one["run"]["world_size"], two["run"]["world_size"]) == (1, 2)
    for name in TASKS:
        assert {k: two["datasets"][name][k] for k in KEEP} == {k: one["datasets"][name][k] for k in KEEP}, name
        a = load_file(str(tmp_path / "cache1" / one["model"]["cache_key"] / f"v2__{name}.safetensors"))
        b = load_file(str(tmp_path / "cache2" / two["model"]["cache_key"] / f"v2__{name}.safetensors"))
        np.testing.assert_array_equal(a["bad"], b["bad"])
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-5, equal_nan=True)
    assert two["totals"]["bad_rows"] > 0 and two["totals"]["dropped_rows"] > 0
    assert two["aggregates"] == one["aggregates"]
