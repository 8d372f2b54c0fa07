"""Checkpoint folders: layout, atomic writes, provenance (resolved config + git hash), resume lookup.

``output_dir/checkpoint-<step>/`` holds the model as written by the stage's ``save_model_fn`` (so the
folder itself loads with ``MoCaEncoder.from_pretrained``), ``run_config.yaml`` (the resolved config,
re-loadable with ``--config``), ``run_meta.json`` (git commit, argv, versions), ``trainer_state.json``
(step, batch-source position, history) and ``train_state/`` (``accelerator.save_state``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moca_train.config import TrainConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "run_config.yaml"  # resolved config, loadable with --config
META_FILE = "run_meta.json"  # git revision, argv, versions
STATE_FILE = "trainer_state.json"
ACCEL_DIR = "train_state"
CKPT_PREFIX = "checkpoint-"


def config_to_dict(cfg: Any) -> dict:
    """A dataclass config as plain YAML/JSON-ready data."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def git_revision(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding ``path`` (default: this package)."""
    cwd = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def save_resolved_config(cfg: Any, directory: str | Path, *, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``run_config.yaml`` (the resolved config, re-loadable with ``--config``) and ``run_meta.json``.

    Args:
        cfg: the root config dataclass.
        directory: target directory (created).
        extra: additional metadata for ``run_meta.json`` (e.g. the world size).
    """
    import torch
    import yaml

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "config_class": f"{type(cfg).__module__}.{type(cfg).__name__}",
        "git": git_revision(),
        "argv": sys.argv,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        **dict(extra or {}),
    }
    _atomic_write(directory / CONFIG_FILE, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    _atomic_write(directory / META_FILE, json.dumps(meta, indent=2, default=str) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (``checkpoint-<step>`` with a trainer state) in step order."""
    root = Path(output_dir)
    found = [p for p in root.glob(f"{CKPT_PREFIX}*") if p.name[len(CKPT_PREFIX) :].isdigit()]
    return sorted((p for p in found if (p / STATE_FILE).is_file()), key=lambda p: int(p.name[len(CKPT_PREFIX) :]))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from per ``cfg.resume`` (``auto``/path/None).

    Raises:
        FileNotFoundError: an explicit ``resume`` path is not a complete checkpoint.
    """
    if cfg.resume is None or cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        found = list_checkpoints(cfg.output_dir)
        return found[-1] if found else None
    path = Path(cfg.resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--train.resume: {str(path)!r} is not a checkpoint (no {STATE_FILE})")
    return path


def save_checkpoint(accelerator, model, *, step, batches, history, cfg, save_model_fn, run_config) -> Path:
    """Write ``checkpoint-<step>`` atomically (temporary folder, then rename) and prune old ones.

    Collective: every rank calls it (``save_state`` and, under FSDP/ZeRO-3, ``get_state_dict`` gather).
    """
    root = Path(cfg.output_dir)
    final, tmp = root / f"{CKPT_PREFIX}{step}", root / f".{CKPT_PREFIX}{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / ACCEL_DIR))  # every rank: optimizer shards, RNG states
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP / ZeRO-3
    if accelerator.is_main_process:
        save_model_fn(accelerator.unwrap_model(model), tmp, state_dict)
        if run_config is not None:
            save_resolved_config(run_config, tmp, extra={"world_size": accelerator.num_processes, "step": step})
        state = {"step": step, "batches": batches.state_dict(), "world_size": accelerator.num_processes}
        (tmp / STATE_FILE).write_text(json.dumps({**state, "history": history}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)
        if cfg.keep_last is not None:
            for old in list_checkpoints(root)[: -cfg.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("saved %s", final)
    accelerator.wait_for_everyone()
    return final
