r"""``python -m moca_model.export_st CHECKPOINT OUT_DIR``: MoCa as a sentence-transformers model folder.

``SentenceTransformer(OUT_DIR)`` then loads offline with sentence-transformers' own modules
(``Transformer`` -> ``Pooling`` (``mean``; ``lasttoken`` for ``pooling: last``) -> ``Normalize``), no
``trust_remote_code`` and no code in the folder, and gives MoCaEncoder's embeddings. Each MoCa-specific
behaviour is configuration:

- weights: the MoCa model's, in its backbone's stock base-model layout (``Qwen2_5_VLModel``, ``Qwen2VLModel``
  or ``Qwen3VLModel``; from any source layout), in the checkpoint's dtype; ``text_config.is_causal``
  records the attention mode (false for MoCa: transformers >= 5.2 then builds a padding-only mask and
  passes ``is_causal=False`` to SDPA, eager and flash attention alike);
- input layout: the chat template of :mod:`moca_model.st.layout` (images first, prompt, text; no markup);
- images: transformers' PIL image processor (``processor_kwargs: {"use_fast": false}``), MoCa's pixel bounds;
- truncation: the tokenizer's ``model_max_length`` is MoCa's ``max_length``.

There is no custom module class: sentence-transformers >= 6 imports a module class from outside its own
package only with ``trust_remote_code=True``, even from an installed package.

The export then loads the folder with sentence-transformers and compares its embeddings of text, image and
image + text probes with MoCaEncoder's (<= 1e-5 in float32); only a folder that passes is moved to OUT_DIR.
Needs sentence-transformers >= 6.2, transformers >= 5.2 and torchvision (the ``.venv-mteb`` environment).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from moca_model.console import add_common_flags, run_cli, setup_logging, verbosity_of
from moca_model.st import verify as st_verify
from moca_model.st.card import CardFacts, license_from_readme, model_card
from moca_model.st.layout import DEFAULT_PROMPTS
from moca_model.st.write import ExportError, write_model, write_processor, write_st_config

logger = logging.getLogger(__name__)


def check_environment() -> None:
    """Raise :class:`ExportError` unless the packages the exported folder needs are importable here."""
    import importlib.util

    import transformers
    from packaging.version import Version

    problems = []
    if Version(transformers.__version__) < Version("5.2"):
        problems.append(f"transformers>=5.2 (found {transformers.__version__}; older ones ignore is_causal)")
    try:
        import sentence_transformers

        if not Version("6.2") <= Version(sentence_transformers.__version__) < Version("7"):
            problems.append(f"sentence-transformers>=6.2,<7 (found {sentence_transformers.__version__})")
    except ImportError:
        problems.append("sentence-transformers>=6.2,<7 (not installed)")
    if importlib.util.find_spec("torchvision") is None:
        problems.append("torchvision (Qwen2.5-VL's processor builds a video processor)")
    if problems:
        raise ExportError("the sentence-transformers export needs " + "; ".join(problems) + ". Use the .venv-mteb "
                          "environment, or pip install 'moca-toolkit[st]'.")  # fmt: skip


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    prompts: dict[str, str] | None = None,
    license: str | None = None,  # noqa: A002 (the model-card field)
    processor_name_or_path: str | Path | None = None,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Export a MoCa checkpoint (any layout, local or hub) as a sentence-transformers folder.

    Args:
        checkpoint: directory or hub id, as for :meth:`moca_model.MoCaEncoder.from_pretrained`.
        out_dir: the folder to write (must not exist unless ``overwrite``).
        prompts: added to / replacing :data:`moca_model.st.layout.DEFAULT_PROMPTS`.
        license: licence id for the card (default: the source README's ``license:``, else unknown).
        processor_name_or_path: tokenizer source when the checkpoint has none.
        verify: reload the folder and compare probe embeddings with MoCaEncoder (float32, CPU).
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        ExportError: see :func:`export_encoder`.
    """
    import torch

    from moca_model.encode import MoCaEncoder
    from moca_model.loading import read_config, resolve_checkpoint

    check_environment()
    path = resolve_checkpoint(checkpoint)
    cfg = read_config(path)
    stored = cfg.get("dtype") or cfg.get("torch_dtype") or cfg.get("text_config", {}).get("dtype")
    stored = stored if stored in ("float32", "bfloat16", "float16") else "float32"  # the weights' dtype, kept

    def load():  # float32 on the CPU: the reference numbers; the weights are written back in the stored dtype
        return MoCaEncoder.from_pretrained(
            path, device="cpu", dtype=torch.float32, processor_name_or_path=processor_name_or_path
        )

    return _export(load, Path(out_dir), source=str(checkpoint), source_dir=path, dtype=str(stored),
                   prompts=prompts, license=license or _source_license(checkpoint, path), verify=verify,
                   overwrite=overwrite)  # fmt: skip


def export_encoder(
    encoder,
    out_dir: str | Path,
    *,
    source: str,
    prompts: dict[str, str] | None = None,
    license: str | None = None,  # noqa: A002
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Export an in-memory :class:`moca_model.MoCaEncoder` (its weights, attention mode and processor).

    Args:
        encoder: the encoder; its model's dtype is the export's (verification tolerance 1e-5 in float32).
        out_dir: the folder to write.
        source: what the card names as the source checkpoint.
        prompts: added to / replacing the default prompts.
        license: licence id for the card.
        verify: reload and compare probe embeddings with ``encoder``.
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir``.

    Raises:
        ExportError: wrong environment, ``out_dir`` exists, or the reloaded folder's embeddings differ.
    """
    check_environment()
    dtype = str(encoder.model.dtype).removeprefix("torch.")
    return _export(lambda: encoder, Path(out_dir), source=source, source_dir=None, dtype=dtype, prompts=prompts,
                   license=license, verify=verify, overwrite=overwrite)  # fmt: skip


def _export(load: Callable, out: Path, *, source, source_dir, dtype, prompts, license, verify, overwrite) -> Path:  # noqa: A002
    if out.exists() and not overwrite:
        raise ExportError(f"{str(out)!r} exists; choose another folder or pass --overwrite")
    prompts = {**DEFAULT_PROMPTS, **(prompts or {})}
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        encoder = load()
        expected = st_verify.reference(encoder, prompts) if verify else None
        ref_dtype = str(encoder.model.dtype).removeprefix("torch.")
        facts = write_model(encoder, tmp, dtype=dtype, source_dir=source_dir, prompts=prompts)
        del encoder
        gc.collect()  # the reference model leaves memory before sentence-transformers loads the copy
        write_processor(tmp, facts["backbone"])
        write_st_config(tmp, prompts, facts["dim"], facts["pooling"])
        card = CardFacts(name=out.name, source=source, license=license, prompts=prompts, dtype=dtype,
                         versions=_versions(), **facts)  # fmt: skip
        (tmp / "README.md").write_text(model_card(card))
        if expected is not None:
            st_verify.verify(tmp, expected, ref_dtype)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("wrote %s: SentenceTransformer(%r)", out, str(out))
    return out


def _source_license(checkpoint, path: Path) -> str | None:
    found = license_from_readme(path / "README.md")
    if found or Path(checkpoint).expanduser().exists():
        return found
    try:  # a hub snapshot holds no README (loading fetches weights and configs only): ask for it, offline-safe
        from huggingface_hub import hf_hub_download

        return license_from_readme(Path(hf_hub_download(str(checkpoint), "README.md")))
    except Exception:  # offline, gated, no card: the card says the licence is unknown
        return None


def _versions() -> dict[str, str]:
    import sentence_transformers
    import transformers

    from moca_model import __version__

    return {"moca-toolkit": __version__, "sentence-transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m moca_model.export_st", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="MoCa checkpoint: directory (any layout, moca_train output included) or hub id")
    p.add_argument("out_dir", help="sentence-transformers folder to write")
    p.add_argument("--prompt", action="append", default=[], metavar="NAME=TEXT",
                   help="add or replace a prompt (repeatable); TEXT may contain {text} and \\n escapes")  # fmt: skip
    p.add_argument("--license", help="licence id for the model card (default: the source's README, else unknown)")
    p.add_argument("--processor", help="tokenizer source when the checkpoint has none")
    p.add_argument("--no-verify", action="store_true", help="skip the reload-and-compare check")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    add_common_flags(p)
    args = p.parse_args(argv)
    setup_logging(verbosity_of(args))
    prompts = {}
    for spec in args.prompt:
        name, sep, text = spec.partition("=")
        if not sep or not name:
            p.error(f"--prompt expects NAME=TEXT, got {spec!r}")
        prompts[name] = text.replace("\\n", "\n").replace("\\t", "\t")
    return run_cli(lambda: export_checkpoint(args.checkpoint, args.out_dir, prompts=prompts, license=args.license,
                                             processor_name_or_path=args.processor, verify=not args.no_verify,
                                             overwrite=args.overwrite) and 0, debug=args.debug)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
