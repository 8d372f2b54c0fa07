"""One CPT step and one CL step give the same losses and gradients with batched vision attention on and off."""

from __future__ import annotations

import functools

import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("accelerate")

from moca_model import MoCaProcessor  # noqa: E402
from moca_model.loading import load_model  # noqa: E402
from moca_model.processing_moca import IMAGE_PLACEHOLDER  # noqa: E402

# pixel sizes whose tiny-processor grids have several windows, edge windows and different frame lengths
SIZES = [(56, 56), (200, 120), (90, 260), (224, 224), (130, 170), (300, 60)]


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    background, fill = (tuple(int(c) for c in torch.randint(0, 256, (3,), generator=g)) for _ in range(2))
    img = Image.new("RGB", (w, h), background)
    ImageDraw.Draw(img).ellipse([w // 5, h // 4, w // 2, h - 2], fill=fill)
    return img


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the tensor's magnitude (a zero-gradient tensor compares absolutely)."""
    return float((a - b).abs().max() / max(float(a.abs().max()), 1e-6))


def _step_twice(model, run_step) -> dict[bool, dict[str, torch.Tensor]]:
    """{switch: {"loss"/"<term>"/parameter name: value}} for one forward + backward per switch state."""
    out = {}
    for batched in (False, True):
        model.batched_vision_attention = batched
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        losses = run_step()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        out[batched] = {**{k: torch.as_tensor(v).detach() for k, v in losses.items()}, **grads}
    assert out[True].keys() == out[False].keys()
    assert any(k.startswith("visual.") for k in out[True])  # the vision tower really got gradients
    return out


def _assert_same(out) -> None:
    worst = {k: _relative_gap(out[False][k], out[True][k]) for k in out[False]}
    assert max(worst.values()) <= 1e-5, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


def test_one_cpt_step_is_the_same_either_way(tiny_dir):
    from moca_train.cpt.collator import CPTCollator, MaskingSettings
    from moca_train.cpt.masking import special_token_ids
    from moca_train.cpt.model import CPTModule, add_mask_token
    from moca_train.cpt.train import cpt_loss

    encoder = load_model(tiny_dir, device=torch.device("cpu"), dtype=torch.float32, attn_implementation="sdpa")
    processor = MoCaProcessor.from_pretrained(tiny_dir)
    mask_id = add_mask_token(processor.tokenizer, encoder)
    module = CPTModule(encoder).train()
    settings = MaskingSettings(mask_token_id=mask_id, never_mask_ids=special_token_ids(processor.tokenizer),
                               p_text=0.4, p_image=0.5)  # fmt: skip
    records = [{"text": f"{IMAGE_PLACEHOLDER}shape number {i} on a page", "images": [_image(w, h, i)]}
               for i, (w, h) in enumerate(SIZES)]  # fmt: skip
    two = [_image(150, 90, 7), _image(60, 200, 8)]
    records.append({"text": f"two {IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER}", "images": two})
    batch = CPTCollator(processor, settings)(records, generator=torch.Generator().manual_seed(0))
    assert batch["inputs"]["image_grid_thw"].shape[0] == len(SIZES) + 2

    def step():
        loss, logs = cpt_loss(module, batch)
        loss.backward()
        return {"loss": loss, "mlm": logs["mlm"], "mae": logs["mae"]}

    out = _step_twice(encoder, step)
    assert out[True]["mlm"] > 0 and out[True]["mae"] > 0
    _assert_same(out)


def test_one_cl_step_is_the_same_either_way(tiny_dir, tmp_path):
    from moca_train.cl.batches import CLBatches
    from moca_train.cl.config import CLDataConfig, CLDatasetConfig, CLLossConfig
    from moca_train.cl.data import load_cl_data
    from moca_train.cl.sampler import TaskBatchSampler
    from moca_train.cl.synthetic import write_world
    from moca_train.cl.train import contrastive_loss
    from moca_train.config import ModelConfig
    from moca_train.gradcache import plain_step
    from moca_train.modeling import build_model

    world = write_world(tmp_path / "w", rows_per_task=24)
    for i, path in enumerate(sorted(world.rglob("*.png"))):  # varied sizes: several windows and edge windows
        w, h = SIZES[i % len(SIZES)]
        Image.open(path).convert("RGB").resize((w, h)).save(path)
    model, processor = build_model(ModelConfig(init_from=str(tiny_dir)))
    model.train()
    data_cfg = CLDataConfig(datasets=[CLDatasetConfig(name="i2t", path=str(world / "shapes_i2t.jsonl"))],
                            num_negatives=2, global_batch_size=8)  # fmt: skip
    data = load_cl_data(data_cfg)
    batch = CLBatches(data, processor, TaskBatchSampler(data.sizes(), global_batch_size=8), chunk_size=64).build(0)
    assert len({tuple(g) for g in batch["query"][0]["image_grid_thw"].tolist()}) > 2
    loss_fn = functools.partial(contrastive_loss, pos_ids=batch["pos_ids"], neg_ids=batch["neg_ids"],
                                cfg=CLLossConfig(temperature=0.03))  # fmt: skip

    def step():
        loss, _ = plain_step(encode=lambda chunk: model(**chunk).embeddings,
                             groups={k: batch[k] for k in ("query", "pos", "neg")}, loss_fn=loss_fn)  # fmt: skip
        return {"loss": loss}

    _assert_same(_step_twice(model, step))
