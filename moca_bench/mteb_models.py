"""MTEB 2.x integration: :class:`MoCaMTEBEncoder` (mteb's encoder protocol on ``MoCaEncoder``) and ModelMetas.

``plugins/moca_plugins/mteb.py`` exposes :func:`model_metas` through the entry-point group ``mteb.models``;
``moca_plugins._hook`` puts them into mteb's ``MODEL_REGISTRY`` when mteb builds it, so
``mteb.get_model("moca-embed/MoCa-Qwen25VL-7B")`` and ``mteb run -m ...`` resolve here. Ours deliberately
replaces mteb's built-in ``moca-embed/MoCa-Qwen25VL-3B`` entry, which needs transformers < 4.53 (or
flash-attn) and fails on transformers 5.

Local checkpoints: :func:`moca_model_meta` builds a ModelMeta for a directory (pass it to
``mteb.evaluate``), and every entry of ``$MOCA_MTEB_CHECKPOINTS`` (``os.pathsep``-separated; ``DIR`` or
``org/name=DIR``) is registered at start-up, so ``mteb run -m DIR`` works too. ``mteb run -m DIR`` /
``mteb mock-run -m DIR`` on a MoCa folder (one with ``moca_config.json``) that is not registered logs what
to set, and loading it fails with that message instead of mteb's "No model implementation is available".

Inputs are formatted as in the table in ``moca_bench/prompts.py`` (docs/mteb.md).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import OutputDType

from moca_bench.model_card import MOCA_CITATION, MOCA_TRAINING_DATASETS
from moca_bench.mteb_inputs import input_columns, task_view
from moca_bench.prompts import mteb_items

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import PromptType
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

MODEL_3B = "moca-embed/MoCa-Qwen25VL-3B"
MODEL_7B = "moca-embed/MoCa-Qwen25VL-7B"
CHECKPOINTS_ENV = "MOCA_MTEB_CHECKPOINTS"
INSTRUCTIONS_ENV = "MOCA_MTEB_INSTRUCTIONS"  # default of the ``instructions`` loader argument
DEVICES_ENV = "MOCA_DEVICES"  # default of ``devices``: "all", "cuda:0,cuda:1", ...
CACHE_ENV = "MOCA_CACHE_DIR"  # default of ``cache_dir``


class MoCaMTEBEncoder(AbsEncoder):
    """mteb encoder for MoCa: formats each input (prompts.py table) and encodes with ``MoCaEncoder``.

    Text-only, image-only and image+text inputs are all supported, in any mix. Returns (N, D) float32.
    """

    def __init__(
        self,
        model_name: str,
        revision: str | None = None,
        *,
        device: str | int | None = None,
        checkpoint: str | None = None,
        dtype: str | None = None,
        attn_implementation: str | None = None,
        attention: str | None = None,
        pooling: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_length: int | None = None,
        processor_name_or_path: str | None = None,
        prompts: Mapping[str, str] | None = None,
        instructions: str | None = None,
        num_workers: int | None = None,
        devices: str | list[str] | None = None,
        cache_dir: str | None = None,
        **kwargs: Any,
    ):
        """Load the model.

        Args:
            model_name: mteb name; also where the weights come from unless ``checkpoint`` is given.
            revision: hub revision (ignored for a local directory).
            device: ``"cuda"``, ``"cpu"``, ``"cuda:1"`` or a CUDA index (``mteb run --device 0``).
            checkpoint: local directory or hub id holding the weights (local checkpoints' metas set it).
            dtype: default bfloat16 on CUDA, float32 on CPU.
            attn_implementation: default flash_attention_2 when installed on CUDA, else sdpa.
            attention: ``bidirectional`` or ``causal`` (default: the checkpoint's moca_config.json, else
                bidirectional).
            pooling: ``mean`` or ``last`` (default: the checkpoint's moca_config.json, else mean).
            min_pixels: per-image lower bound (default MoCa's 256 visual tokens).
            max_pixels: per-image upper bound (default MoCa's 1024 visual tokens).
            max_length: token limit after image expansion (default 1280).
            processor_name_or_path: tokenizer source when the checkpoint has none.
            prompts: instruction overrides by mteb key (``Task-query``, ``Task``, ``TaskType``, ``query``...),
                optionally for one modality (``ZeroShotClassification-image``); see docs/mteb.md.
            instructions: ``"default"`` or ``"mmeb"`` (MoCa's MMEB wording for classification, clustering,
                visual STS and zero-shot; bare zero-shot labels). Default ``$MOCA_MTEB_INSTRUCTIONS``, else
                ``"default"``.
            num_workers: batch-preparation threads (default 2 on CUDA, 1 on CPU; per device worker).
            devices: encode on several devices (``"all"``, ``"cuda:0,cuda:1"``, a list); one worker process
                each. Default ``$MOCA_DEVICES``, else one device (``device``).
            cache_dir: persistent embedding cache (default ``$MOCA_CACHE_DIR``, else memory only): pages
                shared by several tasks or runs are encoded once.
            **kwargs: ``embed_dim`` (checked by mteb) and anything mteb adds later; others are logged.
        """
        from moca_model import MoCaEncoder

        _follow_mteb_verbosity()
        instructions = instructions or os.environ.get(INSTRUCTIONS_ENV) or "default"
        if instructions not in ("default", "mmeb"):
            raise ValueError(f"instructions must be 'default' or 'mmeb', got {instructions!r}")
        kwargs.pop("embed_dim", None)
        if kwargs:
            logger.warning("%s: ignoring unknown loader arguments %s", model_name, sorted(kwargs))
        if isinstance(device, int):
            device = f"cuda:{device}"
        if model_name == MODEL_3B:
            logger.warning("%s is served by moca-toolkit's encoder; it replaces mteb's built-in MoCaWrapper", MODEL_3B)
        source = checkpoint or model_name
        self.encoder = MoCaEncoder.from_pretrained(
            source,
            device=device,
            dtype=dtype,
            attn_implementation=attn_implementation,
            attention=attention,
            pooling=pooling,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            max_length=max_length,
            revision=None if Path(source).expanduser().is_dir() else revision,
            processor_name_or_path=processor_name_or_path,
            devices=devices or os.environ.get(DEVICES_ENV) or None,
            cache_dir=cache_dir or os.environ.get(CACHE_ENV) or None,
        )
        self.model = self.encoder.model
        self.prompts = dict(prompts or {})
        self.instructions = instructions
        self.num_workers = num_workers
        self.mteb_model_meta = moca_model_meta(model_name, checkpoint=checkpoint)  # load_model() replaces it

    def close(self) -> None:
        """Stop the encoder's device workers (``devices`` / ``MOCA_DEVICES``), if any.

        mteb never calls it; the workers also stop when this object is garbage collected and at interpreter
        exit. The encoder cannot encode afterwards.
        """
        self.encoder.close()

    def __enter__(self) -> MoCaMTEBEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Encode every input of ``inputs`` (in order) into unit-norm float32 vectors.

        Args:
            inputs: mteb's DataLoader; batches carry ``text`` and/or ``image`` columns.
            task_metadata: selects the prompts (see ``moca_bench/prompts.py``).
            hf_split: unused.
            hf_subset: unused.
            prompt_type: query, document or None.
            **kwargs: ``batch_size`` (default: the DataLoader's) and ``show_progress_bar`` (default True).

        Returns:
            (N, D) float32 array.
        """
        side = prompt_type.value if prompt_type is not None else None
        try:
            texts, images = input_columns(inputs)
        except ValueError as exc:
            raise ValueError(f"{task_metadata.name}: {exc}") from exc
        task = task_view(task_metadata)
        items = mteb_items(task, side, texts, images, overrides=self.prompts, instructions=self.instructions)
        vectors = self.encoder.encode(
            items,
            batch_size=kwargs.get("batch_size") or getattr(inputs, "batch_size", None) or 16,
            show_progress=kwargs.get("show_progress_bar", True),
            desc=f"{task_metadata.name} {side or 'inputs'}",
            num_workers=self.num_workers,
        )
        logger.info("%s %s: %s", task_metadata.name, side or "inputs", self.encoder.last_stats.summary())
        return vectors


def _follow_mteb_verbosity() -> None:
    """Show this adapter's log lines (cache hits per call) at ``mteb run -v``'s level, unless a level is set."""
    ours, theirs = logging.getLogger("moca_bench"), logging.getLogger("mteb")
    if ours.level == logging.NOTSET and theirs.level != logging.NOTSET:
        ours.setLevel(theirs.level)


def _published_meta(
    name: str, *, revision: str | None, size: str, embed_dim: int, n_parameters: int, n_embedding: int
) -> ModelMeta:
    return ModelMeta(
        loader=MoCaMTEBEncoder,
        name=name,
        revision=revision,
        release_date="2025-06-29",
        languages=["eng-Latn"],
        n_parameters=n_parameters,
        n_embedding_parameters=n_embedding,
        memory_usage_mb=round(n_parameters * 2 / 2**20),  # bfloat16 weights
        max_tokens=32768,
        embed_dim=embed_dim,
        license="mit",
        open_weights=True,
        public_training_code="https://github.com/haon-chen/MoCa",
        public_training_data="https://huggingface.co/moca-embed/datasets",
        framework=["PyTorch", "Transformers", "safetensors"],
        reference=f"https://huggingface.co/{name}",
        similarity_fn_name=ScoringFunction.COSINE,
        use_instructions=True,
        training_datasets=set(MOCA_TRAINING_DATASETS),
        adapted_from=f"Qwen/Qwen2.5-VL-{size}-Instruct",
        modalities=["image", "text"],
        model_type=["dense"],
        citation=MOCA_CITATION,
        output_dtypes=OutputDType.BF16,
    )


# n_parameters: Qwen2.5-VL vision tower + language model as the encoder loads them (no lm_head),
# counted from the architecture. 3B revision: mteb's own pin. 7B revision: from a third-party mteb port
# whose 3B pin matches mteb's; not checked against the hub here (no network).
MOCA_3B_META = _published_meta(
    MODEL_3B,
    revision="89b0e5a9245a95d6df5f54e7ebe1588bc7c7d926",
    size="3B",
    embed_dim=2048,
    n_parameters=3_754_622_976,
    n_embedding=311_164_928,
)
MOCA_7B_META = _published_meta(
    MODEL_7B,
    revision="611a540331631a4e714947e8fa93d14e1ae277d2",
    size="7B",
    embed_dim=3584,
    n_parameters=7_747_169_280,
    n_embedding=544_997_376,
)
PUBLISHED_METAS = {MODEL_3B: MOCA_3B_META, MODEL_7B: MOCA_7B_META}


def moca_model_meta(
    name_or_path: str | os.PathLike, *, name: str | None = None, checkpoint: str | None = None
) -> ModelMeta:
    """A ModelMeta whose loader is :class:`MoCaMTEBEncoder`.

    Args:
        name_or_path: a published name (returns its meta), a local checkpoint directory, or a hub id.
        name: the mteb name (``org/name``) to give a local checkpoint; default ``name_or_path`` as written.
        checkpoint: where the weights are when ``name`` is not a path (default ``name_or_path``).

    Returns:
        The meta; for a local directory ``embed_dim`` comes from its ``config.json``.

    Raises:
        ValueError: the name has no ``/`` (mteb requires ``org/name``; write ``./dir`` for a relative path).
    """
    source = str(checkpoint or name_or_path)
    name = name or str(name_or_path)
    if name in PUBLISHED_METAS and checkpoint is None:
        return PUBLISHED_METAS[name]
    if "/" not in name:
        raise ValueError(f"mteb model names need a '/': {name!r} (write ./{name} for a relative directory)")
    embed_dim = max_tokens = None
    config = Path(source).expanduser() / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        embed_dim = cfg.get("text_config", {}).get("hidden_size") or cfg.get("hidden_size")
        moca_cfg = config.with_name("moca_config.json")
        max_tokens = json.loads(moca_cfg.read_text()).get("max_length") if moca_cfg.is_file() else None
    return ModelMeta.create_empty(
        overwrites={
            "loader": MoCaMTEBEncoder,
            "loader_kwargs": {"checkpoint": source} if source != name else {},
            "name": name,
            "embed_dim": embed_dim,
            "max_tokens": max_tokens,
            "similarity_fn_name": ScoringFunction.COSINE,
            "framework": ["PyTorch", "Transformers", "safetensors"],
            "use_instructions": True,
            "modalities": ["image", "text"],
            "model_type": ["dense"],
            "citation": MOCA_CITATION,
        }
    )


def model_metas(environ: Mapping[str, str] | None = None) -> list[ModelMeta]:
    """The published metas plus one per ``$MOCA_MTEB_CHECKPOINTS`` entry (what the entry point exposes).

    An entry is ``DIR`` (registered under ``DIR`` as written, when it has a ``/``, and under its absolute
    path) or ``org/name=DIR``. A bad entry is logged and skipped.
    """
    environ = os.environ if environ is None else environ
    metas = list(PUBLISHED_METAS.values())
    for entry in filter(None, environ.get(CHECKPOINTS_ENV, "").split(os.pathsep)):
        name, _, path = entry.partition("=") if "=" in entry else ("", "", entry)
        names = [name] if name else [n for n in (path, str(Path(path).expanduser().resolve())) if "/" in n]
        for n in dict.fromkeys(names):
            try:
                metas.append(moca_model_meta(n, checkpoint=str(Path(path).expanduser().resolve())))
            except ValueError as exc:
                logger.warning("%s entry %r skipped: %s", CHECKPOINTS_ENV, entry, exc)
    metas += unregistered_folders(sys.argv, metas)
    builtin = getattr(sys.modules.get("mteb.models.model_implementations"), "MODEL_REGISTRY", {}).get(MODEL_3B)
    if builtin is not None and builtin.loader is not MoCaMTEBEncoder:
        logger.info("moca-toolkit's %s entry replaces mteb's built-in one (%s)", MODEL_3B, builtin.loader)
    return metas


def _argv_models(argv: list[str]) -> list[str]:
    """The values of ``-m`` / ``--model`` / ``--models`` in an ``mteb`` command line."""
    found, take = [], False
    for arg in argv[1:]:
        if take and not arg.startswith("-"):
            found.append(arg)
            continue
        take = arg in ("-m", "--model", "--models")
        name, eq, value = arg.partition("=")
        if eq and name in ("--model", "--models"):
            found.append(value)
    return found


def _unregistered_loader(model_name: str, revision: str | None = None, *, hint: str, **kwargs: Any):
    """Loader of a MoCa folder mteb was asked for but that is not registered: fails with what to set."""
    from moca_model.loading import MoCaLoadError

    raise MoCaLoadError(hint)


def unregistered_folders(argv: list[str], metas: list[ModelMeta]) -> list[ModelMeta]:
    """For ``mteb run/mock-run -m DIR`` on a MoCa folder not in ``$MOCA_MTEB_CHECKPOINTS``: say what to set.

    mteb would report only "No model implementation is available for this model". Each such folder gets a
    warning now and a ModelMeta whose loader raises the same hint, so it is also mteb's last line.
    """
    prog = Path(argv[0]) if argv else Path()
    if "mteb" not in (prog.name, prog.parent.name):  # the mteb script, or python -m mteb
        return []
    names = {m.name for m in metas}
    registered = {str(Path(m.loader_kwargs["checkpoint"])) for m in metas if m.loader_kwargs.get("checkpoint")}
    out = []
    for value in _argv_models(argv):
        folder = Path(value).expanduser()
        if value in names or not (folder / "moca_config.json").is_file():
            continue
        if str(folder.resolve()) in registered and "/" in value:
            continue
        hint = (f"{value!r} is a MoCa checkpoint, but mteb finds local MoCa checkpoints only through "
                f"${CHECKPOINTS_ENV}: export {CHECKPOINTS_ENV}={folder.resolve()} (several: separated by "
                f"{os.pathsep!r}; or NAME=DIR), then rerun")  # fmt: skip
        if "/" not in value:
            hint += f" with -m ./{value} (mteb needs a '/' in a model name)"
        logger.warning("%s", hint)
        if "/" in value:
            meta = moca_model_meta(value)
            out.append(meta.model_copy(update={"loader": _unregistered_loader, "loader_kwargs": {"hint": hint}}))
    return out


__all__ = [
    "MOCA_3B_META",
    "MOCA_7B_META",
    "MoCaMTEBEncoder",
    "model_metas",
    "moca_model_meta",
]

# Imported before mteb, this module made mteb load our entry point while half-initialised; finish that now.
if "moca_plugins._hook" in sys.modules:
    sys.modules["moca_plugins._hook"].retry_pending()
