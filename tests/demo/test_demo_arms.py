"""The study's arms do what the protocol says (docs/demo-protocol.md §2), run through the real commands.

- the compute control (b_plus, a_plus) sees exactly CPT's token budget, read from the two runs' records;
- a_last trains and is evaluated with last-token pooling: its checkpoint's embedding is the causal model's
  normalised state at the last real token.

Both run the real entry points in subprocesses (about a minute on an idle machine), so they are marked slow.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo import collect, plan  # noqa: E402
from demo import world as demo_world  # noqa: E402

WORLD = demo_world.WorldConfig(
    cl_pairs={"digits_cls": 16, "shapes_t2i": 16}, corpus_shape_records=24, corpus_scene_records=6,
    corpus_digit_records=12, corpus_page_records=4, eval_queries=4, retrieval_pools=1, grounding_queries=4,
    page_pools=1, eval_digits=20, cl_digits=20, cl_val_pairs=4,
)  # fmt: skip
STEPS = 4


@pytest.fixture(scope="module")
def seed_paths(tmp_path_factory):
    """A tiny world and a seed whose "base" checkpoint is a tiny causal initialisation."""
    from moca_model.tiny import write_tiny_checkpoint

    work = tmp_path_factory.mktemp("work")
    manifest = demo_world.build_world(WORLD, work / "world", show_progress=False)
    preset = replace(plan.Preset(world=WORLD), base_steps=1, cpt_steps=STEPS, cl_steps=STEPS)
    paths = plan.SeedPaths(work / "s0", preset)
    write_tiny_checkpoint(paths.model(plan.BASE), seed=0, hidden=64, layers=2)
    return paths, manifest, work / "world"


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.train
def test_control_stage_uses_cpt_token_budget_from_run_records(seed_paths):
    paths, manifest, world = seed_paths
    cpt = plan.pre_stage_argv(paths, 0, "mlm_mae", world, manifest)
    control = plan.pre_stage_argv(paths, 0, "clm", world, manifest)

    def options(argv):
        return dict(zip(argv[3::2], argv[4::2], strict=True))  # after "python -m <module>"

    a, b = options(cpt), options(control)
    differ = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert differ == {"--train.output_dir", "--model.attention", "--objective.use_mlm", "--objective.use_mae",
                      "--objective.use_clm"}  # same recipe, corpus, steps, token budget and data seed
    assert b["--model.attention"] == "causal" and b["--objective.use_clm"] == "true"
    _run(cpt)
    _run(control)
    cpt_tokens = collect.token_total(paths.run("cpt_mlm_mae"))
    control_tokens = collect.token_total(paths.run("cpt_clm"))
    assert cpt_tokens > 0 and control_tokens == cpt_tokens
    assert len(collect.history(paths.run("cpt_clm"))) == len(collect.history(paths.run("cpt_mlm_mae"))) == STEPS
    assert "clm" in collect.history(paths.run("cpt_clm"))[-1] and "mlm" in collect.history(paths.run("cpt_mlm_mae"))[-1]


@pytest.mark.slow
@pytest.mark.train
def test_a_last_pools_the_last_real_token(seed_paths):
    import torch
    from transformers import Qwen2_5_VLModel

    from moca_model import MoCaEncoder, moca_config
    from moca_model.processing_moca import normalize_item

    paths, manifest, world = seed_paths
    argv = plan.cl_argv(paths, 0, "a_last", 1e-3, world, manifest)
    assert argv[argv.index("--model.pooling") + 1] == "last" and argv[argv.index("--model.attention") + 1] == "causal"
    _run(argv)
    ckpt = paths.model(plan.model_name("a_last", 1e-3))
    assert moca_config.attention(ckpt) == "causal"
    enc = MoCaEncoder.from_pretrained(ckpt, device="cpu")  # what every demo evaluation loads
    model, proc = enc.model, enc.processor
    texts = ["a", "Find me an everyday image that matches the given caption: a small red circle at the top left",
             "documentation of the json module"]  # different lengths: padding in the batch
    inputs = proc.collate([proc.process(normalize_item(t, i), i) for i, t in enumerate(texts)])
    assert (inputs["attention_mask"] == 0).any()
    stock = Qwen2_5_VLModel._from_config(model.config, attn_implementation="sdpa").eval()
    stock.load_state_dict(model.state_dict())
    with torch.no_grad():
        ours = model(**inputs).embeddings
        states = stock(**inputs).last_hidden_state
    mask = inputs["attention_mask"]
    last = mask.shape[1] - 1 - torch.flip(mask, dims=[1]).argmax(dim=1)  # the last real token, any padding side
    expected = torch.nn.functional.normalize(states[torch.arange(len(texts)), last].float(), dim=-1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    mean = torch.nn.functional.normalize((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    assert not torch.allclose(ours, mean, atol=1e-3)  # and it is not the mean
    encoded = torch.from_numpy(enc.encode(texts, batch_size=2, show_progress=False))
    torch.testing.assert_close(encoded, expected, rtol=0, atol=1e-5)
