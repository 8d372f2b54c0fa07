"""FSDP2 with two gloo ranks on CPU (``accelerate launch --config_file configs/accelerate/fsdp.yaml``) trains
exactly like one process: CL with GradCache and CPT, steps where only one rank has images included.

accelerate 1.x would run this launch as plain DDP on a CPU-only machine; ``moca_train.launcher`` switches
it to FSDP2 (``fully_shard`` over gloo), and the runs assert that it did (``FSDP2 on 2 CPU ranks``).
CPT's "one process" consumes rank 0's and then rank 1's micro-batch of every global batch with
``grad_accum_steps: 2``: the same rows, masks and averaged gradient as the two ranks.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

pytest.importorskip("accelerate")

from moca_train.cli import parse_config  # noqa: E402
from moca_train.cpt.config import CPTConfig  # noqa: E402

from .conftest import ROOT, assert_same_weights, checkpoint_weights, launch, write_modality_tasks  # noqa: E402
from .test_cl_ddp import cl_args, compare_with_one_process, step_modalities  # noqa: E402

pytestmark = pytest.mark.slow
CPT_STEPS = 4  # with token_budget 64 and data seed 1: a text-only step, and one where only rank 0 has images


def test_cl_fsdp_two_ranks_equal_one_process(tiny_dir, tmp_path):
    from moca_train.cl.synthetic import write_world

    assert (True, False) in step_modalities()  # a step where rank 1 has no image while rank 0 has
    tasks = write_modality_tasks(write_world(tmp_path / "world", rows_per_task=24))
    args = cl_args(tiny_dir, tasks)
    # -vv: accelerate's INFO lines ("Saving FSDP model") are hidden at the default verbosity
    proc = launch("fsdp", "moca_train.cl", [*args, "-vv", "--train.output_dir", str(tmp_path / "fsdp")])
    assert "FSDP2 on 2 CPU ranks" in proc.stderr and "Saving FSDP model" in proc.stderr
    compare_with_one_process(tiny_dir, tmp_path, tmp_path / "fsdp", args)


class RankInterleaved:
    """One process's batch source: rank 0's micro-batch, then rank 1's, of each global batch."""

    def __init__(self, sources):
        self.sources = sources

    def __iter__(self):
        streams = [iter(s) for s in self.sources]
        while True:
            for stream in streams:
                yield next(stream)

    def state_dict(self):
        return {"ranks": [s.state_dict() for s in self.sources]}

    def load_state_dict(self, state):
        for source, s in zip(self.sources, state["ranks"], strict=True):
            source.load_state_dict(s)


def _cpt_as_one_process(cfg: CPTConfig, world_size: int):
    """``moca_train.cpt.train.run`` in one process, fed every rank's micro-batch of each step in turn."""
    import torch

    from moca_model.loading import resolve_checkpoint
    from moca_train.cpt import train as cpt
    from moca_train.cpt.model import CPTModule, add_mask_token
    from moca_train.engine import build_accelerator, train
    from moca_train.modeling import build_model

    accelerator = build_accelerator(cfg.train)
    torch.manual_seed(cfg.train.seed)  # as cpt.run: the MAE projection's init
    encoder, processor = build_model(cfg.model)
    mask_id = add_mask_token(processor.tokenizer, encoder, cfg.objective.mask_token)
    ckpt = resolve_checkpoint(cfg.model.init_from)
    module = CPTModule(encoder, mae_weight=cfg.objective.mae_weight, checkpoint_dir=ckpt)
    ranks = [SimpleNamespace(num_processes=world_size, process_index=r, main_process_first=contextlib.nullcontext)
             for r in range(world_size)]  # fmt: skip
    sources = [cpt.build_batches(cfg, processor, mask_id, accelerator=rank) for rank in ranks]
    images = [[int(b["inputs"]["image_grid_thw"].shape[0]) if b["mae_target"].shape[0] else 0
               for _, b in zip(range(CPT_STEPS), iter(s))] for s in sources]  # fmt: skip
    for source in sources:
        source.load_state_dict({"epoch": 0, "step": 0})
    history = train(model=module, batches=RankInterleaved(sources), cfg=cfg.train, loss_fn=cpt.cpt_loss,
                    save_model_fn=cpt.make_save_fn(processor), run_config=cfg, accelerator=accelerator)  # fmt: skip
    return history, images


def test_cpt_fsdp_two_ranks_equal_one_process(tiny_dir, tmp_path):
    from moca_train.cpt.synthetic import write_corpus

    corpus = write_corpus(tmp_path / "corpus", rows=120, seed=0)
    args = [
        "--config", str(ROOT / "configs/cpt/tiny.yaml"), "--model.init_from", str(tiny_dir),
        "--data.sources", f"[{{path: {corpus}}}]", "--data.cache_dir", str(tmp_path / "cache"),
        "--data.token_budget", "64",
        "--train.max_steps", str(CPT_STEPS), "--train.progress_bar", "false",
    ]  # fmt: skip
    # -vv: accelerate's INFO lines ("Saving FSDP model") are hidden at the default verbosity
    proc = launch("fsdp", "moca_train.cpt", [*args, "-vv", "--train.output_dir", str(tmp_path / "fsdp")])
    assert "FSDP2 on 2 CPU ranks" in proc.stderr and "Saving FSDP model" in proc.stderr
    one_args = [*args, "--train.output_dir", str(tmp_path / "single"), "--train.grad_accum_steps", "2"]
    history, images = _cpt_as_one_process(parse_config(one_args, CPTConfig), world_size=2)
    assert any(a and not b for a, b in zip(*images)), images  # rank 1 text-only (dummy image), rank 0 not
    assert len(history) == CPT_STEPS
    worst = assert_same_weights(checkpoint_weights(tmp_path / "single", CPT_STEPS),
                                checkpoint_weights(tmp_path / "fsdp", CPT_STEPS))  # fmt: skip
    print(f"CPT, FSDP2 2 ranks vs 1 process: max |weight difference| {worst:.2e}")  # shown with -rP
