"""Shared fixtures: offline hub, one torch thread, seeded global RNGs, tiny checkpoints written once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # 2-core machines: more threads make everything slower, not faster

SEED = 0


@pytest.fixture(autouse=True)
def _seed_global_rngs():
    """Seed Python's, NumPy's and torch's global generators before every test.

    A test's random data then never depend on which tests ran before it (or on ``-k`` / ``-x`` / the
    slow tests being selected). Tests that need several independent draws still use their own
    ``torch.Generator`` / ``np.random.default_rng`` (house rule 6).
    """
    random.seed(SEED)
    np.random.seed(SEED)  # the legacy global generator, for libraries that still draw from it
    torch.manual_seed(SEED)


@pytest.fixture(autouse=True)
def _restore_logging():
    """A command's ``main()`` called in-process configures logging (``moca_model.console.setup_logging``: root
    handler and level, quiet third-party loggers, Python warnings as log lines); undo it after each test."""  # noqa: D205, D209
    import logging

    from moca_model.console import THIRD_PARTY

    root = logging.getLogger()
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in THIRD_PARTY}
    env = os.environ.get("TRANSFORMERS_VERBOSITY")
    yield
    root.handlers[:], _, levels = saved[0], None, saved[2]
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)
    if env is None:
        os.environ.pop("TRANSFORMERS_VERBOSITY", None)
    else:
        os.environ["TRANSFORMERS_VERBOSITY"] = env


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random checkpoint in the current layout (see moca_model.tiny)."""
    from moca_model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "current", layout="current", seed=0)


@pytest.fixture(scope="session")
def tiny_legacy_dir(tmp_path_factory):
    """The same weights as ``tiny_dir`` in the released (legacy) layout."""
    from moca_model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "legacy", layout="legacy", seed=0)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_dir):
    """A MoCaEncoder on the tiny checkpoint (CPU, fp32, SDPA), without a cache (every call really encodes,
    so comparisons between calls mean something). Do not mutate it in tests."""
    from moca_model import MoCaEncoder

    return MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_memory_mb=0)


@pytest.fixture(scope="session")
def tiny_backbone_dirs(tmp_path_factory, tiny_dir):
    """``dirs(backbone)``: a tiny random checkpoint of that backbone (written once per session; Qwen2.5-VL's is
    ``tiny_dir``)."""
    from moca_model.tiny import write_tiny_checkpoint

    written = {"qwen2_5_vl": tiny_dir}

    def dirs(backbone: str):
        if backbone not in written:
            written[backbone] = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / backbone, backbone=backbone)
        return written[backbone]

    return dirs


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as ended)."""
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
def wait_gone():
    """``wait_gone(pids, timeout)``: the pids still running after up to ``timeout`` seconds (device-pool tests)."""
    import time

    def wait(pids: list[int], timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        return [p for p in pids if _running(p)]

    return wait
