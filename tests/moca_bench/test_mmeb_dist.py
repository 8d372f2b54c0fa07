"""Two gloo ranks (CPU) give the same scores, counts and vectors as one process.

The default test forks two ranks that share the already-imported tiny encoder (seconds); the slow one
goes through the real command, ``torchrun --nproc_per_node 2 -m moca_bench.mmeb`` (re-imports torch and
transformers in every rank, which takes tens of seconds on a busy 2-core machine).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from moca_bench.mmeb import run
from moca_bench.mmeb.config import MMEBConfig
from moca_bench.mmeb.synthetic import SAMPLE_SUBSETS, write_sample

KEEP = ("score", "scores_by_tie_rule", "rows", "scored_rows", "bad_rows", "bad_items", "bad_examples", "tied_rows",
        "unique_items", "encoded_items")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(tiny_dir, data, tmp, tag) -> MMEBConfig:
    return MMEBConfig(model=str(tiny_dir), data_dir=str(data), device="cpu", progress=False, model_name="m",
                      subsets=list(SAMPLE_SUBSETS), output_dir=str(tmp / f"out{tag}"),
                      cache_dir=str(tmp / f"cache{tag}"))  # fmt: skip


def _assert_same(one: dict, two: dict, tmp) -> None:
    from safetensors.numpy import load_file

    assert (one["run"]["world_size"], two["run"]["world_size"]) == (1, 2)
    assert two["model"]["cache_key"] == one["model"]["cache_key"]
    for name in SAMPLE_SUBSETS:
        assert {k: two["datasets"][name][k] for k in KEEP} == {k: one["datasets"][name][k] for k in KEEP}, name
        a = load_file(str(tmp / "cache1" / one["model"]["cache_key"] / f"{name}.safetensors"))
        b = load_file(str(tmp / "cache2" / two["model"]["cache_key"] / f"{name}.safetensors"))
        np.testing.assert_array_equal(a["bad"], b["bad"])
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-5, equal_nan=True)
    assert two["totals"]["bad_rows"] > 0 and two["totals"]["tied_rows"] > 0
    assert two["aggregates"] == one["aggregates"]


@pytest.fixture
def data(tmp_path):
    return write_sample(tmp_path / "data", rows=7, bad_images=True, tie_row=True)  # 7 rows: uneven shards


def _rank_main(rank: int, port: int, cfg: MMEBConfig, encoder) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})  # fmt: skip
    run(cfg, encoder=encoder)


def test_two_forked_gloo_ranks_match_one_process(tiny_dir, tiny_encoder, data, tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process; forked ranks would inherit it")
    cfg = _cfg(tiny_dir, data, tmp_path, 2)
    ctx, port = multiprocessing.get_context("fork"), _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, cfg, tiny_encoder)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():  # a hung collective must fail the test, not the suite
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    two = json.loads((tmp_path / "out2" / "m" / "mmeb.json").read_text())
    one = run(_cfg(tiny_dir, data, tmp_path, 1), encoder=tiny_encoder)
    _assert_same(one, two, tmp_path)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_match_one_process(tiny_dir, tiny_encoder, data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "moca_bench.mmeb",
           "--model", str(tiny_dir), "--data-dir", str(data), "--device", "cpu", "--no-progress", "--model-name", "m",
           "--subsets", *SAMPLE_SUBSETS, "--output-dir", str(tmp_path / "out2"),
           "--cache-dir", str(tmp_path / "cache2")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "out2" / "m" / "mmeb.json").read_text())
    one = run(_cfg(tiny_dir, data, tmp_path, 1), encoder=tiny_encoder)
    _assert_same(one, two, tmp_path)
