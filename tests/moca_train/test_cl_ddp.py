"""Two gloo ranks (torchrun, DDP on CPU) train exactly like one process on the same global batches.

The steps (data seed 5) are chosen so that a text-only step follows an image step, and one step gives
images to rank 0 only: parameters a step does not use (the vision tower on text) must move identically
(AdamW momentum and weight decay on a zero gradient) in one process and in many.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("accelerate")

from moca_train.cl import train as cl  # noqa: E402
from moca_train.cl.config import CLConfig  # noqa: E402
from moca_train.cl.sampler import TaskBatchSampler, local_rows  # noqa: E402
from moca_train.cli import parse_config  # noqa: E402

from .conftest import ROOT, assert_same_weights, checkpoint_weights, launch, rank_has_image, write_modality_tasks

STEPS = 4


def cl_args(tiny_dir, tasks) -> list[str]:
    return [
        "--config", str(ROOT / "configs/cl/tiny.yaml"), "--model.init_from", str(tiny_dir),
        "--data.datasets", json.dumps([{"name": k, "path": str(v)} for k, v in tasks.items()]),
        "--data.global_batch_size", "4", "--data.seed", "5", "--data.same_task_batches", "true",
        "--loss.gradcache", "true", "--loss.chunk_size", "2", "--train.max_steps", str(STEPS),
        "--train.max_grad_norm", "1e6", "--train.progress_bar", "false",
    ]  # fmt: skip


def step_modalities(world_size: int = 2) -> list[tuple[bool, ...]]:
    """Per step, whether each rank's rows have an image (tasks of 24 rows, global batch 4, seed 5)."""
    sampler = TaskBatchSampler([24, 24, 24], global_batch_size=4, seed=5)
    out = []
    for pos in range(STEPS):
        _, rows = sampler.batch_at(pos)
        ranks = [local_rows(rows, rank=k, world_size=world_size).tolist() for k in range(world_size)]
        out.append(tuple(any(rank_has_image(t, r) for t, r in rr) for rr in ranks))
    return out


def compare_with_one_process(tiny_dir, tmp_path, two_dir, args) -> None:
    """History and weights of the 2-rank run in ``two_dir`` against one process on the same steps."""
    two = json.loads((two_dir / f"checkpoint-{STEPS}/trainer_state.json").read_text())
    assert two["world_size"] == 2
    one = cl.run(parse_config([*args, "--train.output_dir", str(tmp_path / "single")], CLConfig))
    for a, b in zip(one, two["history"], strict=True):
        for key in ("loss", "accuracy", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (key, a, b)
        # max_grad_norm's units: the reference's unscaled loss, i.e. the full-batch gradient / number of ranks
        assert b["grad_norm"] == pytest.approx(a["grad_norm"] / 2, rel=1e-5), (a, b)
    weights = checkpoint_weights(tmp_path / "single", STEPS)
    assert any(k.startswith("visual.") for k in weights)
    worst = assert_same_weights(weights, checkpoint_weights(two_dir, STEPS), atol=1e-5)
    print(f"CL, 2 ranks vs 1 process: max |weight difference| {worst:.2e}")  # shown with -rP


def test_two_gloo_ranks_equal_one_process(tiny_dir, tmp_path):
    from moca_train.cl.synthetic import write_world

    assert step_modalities() == [(False, False), (True, False), (True, True), (False, False)]
    tasks = write_modality_tasks(write_world(tmp_path / "world", rows_per_task=24))
    args = cl_args(tiny_dir, tasks)
    launch("ddp", "moca_train.cl", [*args, "--train.output_dir", str(tmp_path / "ddp")])
    compare_with_one_process(tiny_dir, tmp_path, tmp_path / "ddp", args)
