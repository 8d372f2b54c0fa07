"""GradCache under DeepSpeed takes exactly one optimizer step per training step, with the full-batch gradient.

A unit test in both environments (the real engine on DeepSpeed's CPU accelerator: test_deepspeed.py, .venv,
slow): the engine is a stub that keeps DeepSpeedEngine's
accumulation contract (deepspeed 0.14.4 ``runtime/engine.py``: ``backward`` accumulates; ``step`` updates
only at a gradient-accumulation boundary, which ``set_gradient_accumulation_boundary`` overrides). The
accelerator side is accelerate's own ``Accelerator.backward`` and ``DeepSpeedEngineWrapper``, which call
``engine.step()`` after every backward whose gradients sync: what the CL step used before it drove the
boundary itself (it then took one optimizer step per GradCache chunk).
"""

from __future__ import annotations

import contextlib

import pytest

pytest.importorskip("accelerate")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from accelerate.utils.deepspeed import DeepSpeedEngineWrapper  # noqa: E402

from moca_train.cl.config import CLLossConfig  # noqa: E402
from moca_train.cl.train import make_step_fn  # noqa: E402


class EngineStub:
    """Counts optimizer steps; records the gradient each one would apply, then zeroes it as DeepSpeed does."""

    def __init__(self, module: torch.nn.Module, gradient_accumulation_steps: int = 1):
        self.module, self.gas = module, gradient_accumulation_steps
        self.micro_steps, self._boundary = 0, None
        self.backwards, self.stepped_grads = 0, []

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        self._boundary = is_boundary

    def is_gradient_accumulation_boundary(self) -> bool:
        if self._boundary is None:
            return (self.micro_steps + 1) % self.gas == 0
        return self._boundary

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        self.backwards += 1
        loss.backward()

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            grads = {n: p.grad.clone() for n, p in self.module.named_parameters() if p.grad is not None}
            self.stepped_grads.append(grads)
            self.module.zero_grad(set_to_none=True)
        self.micro_steps += 1


class DeepSpeedAccelerator:
    """The attributes of a DeepSpeed ``Accelerator`` that the CL step uses, with accelerate's ``backward``."""

    distributed_type = DistributedType.DEEPSPEED
    device = torch.device("cpu")
    sync_gradients = True  # CL never accumulates (train.grad_accum_steps must be 1)
    gradient_accumulation_steps = 1
    backward = Accelerator.backward

    def __init__(self, engine: EngineStub):
        self.deepspeed_engine_wrapped = DeepSpeedEngineWrapper(engine)

    def no_sync(self, model):
        return contextlib.nullcontext()


@pytest.fixture(scope="module")
def model_and_batch(tiny_dir, tmp_path_factory):
    from moca_train.cl.batches import CLBatches
    from moca_train.cl.config import CLDataConfig, CLDatasetConfig
    from moca_train.cl.data import load_cl_data
    from moca_train.cl.sampler import TaskBatchSampler
    from moca_train.cl.synthetic import write_world
    from moca_train.config import ModelConfig
    from moca_train.modeling import build_model

    world = write_world(tmp_path_factory.mktemp("w"), rows_per_task=24)
    model, processor = build_model(ModelConfig(init_from=str(tiny_dir)))
    data = load_cl_data(
        CLDataConfig(datasets=[CLDatasetConfig(name="i2t", path=str(world / "shapes_i2t.jsonl"))], num_negatives=2)
    )
    sampler = TaskBatchSampler(data.sizes(), global_batch_size=8)
    return model, {size: CLBatches(data, processor, sampler, chunk_size=size).build(0) for size in (3, 64)}


def _step(model, batch, *, gradcache: bool) -> EngineStub:
    engine = EngineStub(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    make_step_fn(CLLossConfig(temperature=0.03, gradcache=gradcache))(model, batch, DeepSpeedAccelerator(engine))
    return engine


def test_gradcache_steps_the_deepspeed_engine_once_with_the_full_batch_gradient(model_and_batch):
    model, batches = model_and_batch
    chunked = batches[3]
    n_chunks = sum(len(chunked[k]) for k in ("query", "pos", "neg"))
    assert n_chunks == 12  # 8 queries, 8 positives, 16 negatives in chunks of 3
    cached = _step(model, chunked, gradcache=True)
    assert cached.backwards == n_chunks  # one backward per chunk ...
    assert len(cached.stepped_grads) == 1  # ... and exactly one optimizer step, after the last one
    plain = _step(model, batches[64], gradcache=False)
    assert plain.backwards == 1 and len(plain.stepped_grads) == 1
    want, got = plain.stepped_grads[0], cached.stepped_grads[0]
    assert want.keys() == got.keys() and any(n.startswith("visual.") for n in want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
