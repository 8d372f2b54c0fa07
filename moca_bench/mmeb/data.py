"""MMEB-eval rows -> de-duplicated (text, image) pairs and per-row index arrays.

A row of ``TIGER-Lab/MMEB-eval`` (any subset, split ``test``) has ``qry_text`` (str), ``qry_img_path``
(str, "" when the query has no image), ``tgt_text`` (list of str) and ``tgt_img_path`` (list of str);
candidate 0 is the ground truth. Texts keep the Phi-3-V placeholder ``<|image_1|>`` and their exact
whitespace; the encoder rewrites the placeholder to Qwen's. As in the reference (``src/dataset.py``),
a placeholder in a text without an image is deleted, and pairs are identified by (text, image path),
so each unique pair is encoded once per subset (queries and candidates share one table).

Sources:
- a local folder in the hub layout (``--data-dir``): ``<dir>/<Subset>/<split>-*.parquet`` and the
  images from ``images.zip`` unpacked somewhere below ``<dir>`` (found automatically) or ``--image-root``;
- the hub (``TIGER-Lab/MMEB-eval`` via ``datasets`` + ``images.zip``), only when online.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moca_model.errors import MoCaError

logger = logging.getLogger(__name__)

HUB_DATASET = "TIGER-Lab/MMEB-eval"
HUB_IMAGES_FILE = "images.zip"
COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
_IMAGE_ROOT_GUESSES = ("eval_images", "images/eval_images", "images", ".")
_ROOT_PROBES = 32  # image paths checked when guessing the image root


class MMEBDataError(MoCaError, RuntimeError):
    """MMEB data that cannot be found or read (the message says what to pass instead)."""


@dataclass(frozen=True)
class Pair:
    """One MMEB input as stored: text (with Phi-3 placeholder) and image path relative to the image root."""

    text: str
    image: str = ""


@dataclass
class SubsetData:
    """One subset as index arrays over its unique pairs.

    Shapes: R rows, C candidates per row (ragged rows are padded with -1), U unique pairs.
    """

    name: str
    pairs: list[Pair]
    """(U,) unique pairs, queries first, in first-seen order."""
    queries: np.ndarray
    """(R,) int64: pair index of each row's query."""
    candidates: np.ndarray
    """(R, C) int64: pair index of each candidate, ground truth in column 0, -1 = padding."""
    image_root: Path | None = None
    """Folder the pairs' image paths are relative to."""

    @property
    def n_rows(self) -> int:
        """Number of rows (queries) R."""
        return len(self.queries)

    def image_path(self, index: int) -> Path | None:
        """Absolute path of pair ``index``'s image, or None when it has none."""
        image = self.pairs[index].image
        if not image:
            return None
        return Path(image) if self.image_root is None else self.image_root / image

    def describe(self, index: int) -> str:
        """Pair ``index``'s image path as stored ("" when it has none), for messages."""
        return self.pairs[index].image

    def item(self, index: int) -> dict:
        """Encoder input for pair ``index`` (see :meth:`moca_model.MoCaEncoder.encode`)."""
        pair, path = self.pairs[index], self.image_path(index)
        if path is None:
            return {"text": _PLACEHOLDER.sub("", pair.text)}
        return {"text": pair.text, "image": str(path)}


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return ["" if v is None else str(v) for v in value]


def build_subset(
    name: str, rows: Iterable[Mapping], *, image_root: Path | None = None, max_rows: int | None = None
) -> SubsetData:
    """Turn MMEB rows into a :class:`SubsetData`.

    Args:
        name: subset name.
        rows: mappings with ``qry_text``, ``qry_img_path``, ``tgt_text``, ``tgt_img_path``.
        image_root: folder the image paths are relative to.
        max_rows: keep only the first rows (smoke runs; not the protocol).

    Returns:
        The subset with de-duplicated pairs.

    Raises:
        MMEBDataError: a row without candidates or with mismatched candidate lists.
    """
    index: dict[Pair, int] = {}
    pairs: list[Pair] = []

    def pair_id(text, image) -> int:
        pair = Pair("" if text is None else str(text), "" if image is None else str(image))
        if pair not in index:
            index[pair] = len(pairs)
            pairs.append(pair)
        return index[pair]

    queries: list[int] = []
    cand_texts: list[tuple[list[str], list[str]]] = []
    for r, row in enumerate(rows):
        if max_rows is not None and r >= max_rows:
            break
        texts, images = _as_list(row["tgt_text"]), _as_list(row.get("tgt_img_path"))
        images = images or [""] * len(texts)
        if not texts or len(texts) != len(images):
            raise MMEBDataError(f"{name} row {r}: {len(texts)} candidate texts for {len(images)} candidate images")
        queries.append(pair_id(row["qry_text"], row.get("qry_img_path")))
        cand_texts.append((texts, images))
    width = max((len(t) for t, _ in cand_texts), default=0)
    candidates = np.full((len(queries), width), -1, dtype=np.int64)
    for r, (texts, images) in enumerate(cand_texts):  # after all queries, so queries come first in `pairs`
        candidates[r, : len(texts)] = [pair_id(t, i) for t, i in zip(texts, images)]
    return SubsetData(name, pairs, np.asarray(queries, dtype=np.int64), candidates, image_root)


def find_parquet(data_dir: Path, subset: str, split: str) -> list[Path]:
    """Parquet files of one subset and split in a local hub-layout folder.

    Raises:
        MMEBDataError: none found.
    """
    folder = Path(data_dir) / subset
    files = sorted(folder.glob(f"{split}-*.parquet")) or sorted(folder.glob(f"{split}*.parquet"))
    if not files:
        raise MMEBDataError(
            f"no {split!r} parquet for subset {subset!r} under {folder} "
            f"(expected the {HUB_DATASET} layout: <data-dir>/<Subset>/{split}-00000-of-00001.parquet)"
        )
    return files


def read_local_rows(data_dir: Path, subset: str, split: str = "test") -> list[dict]:
    """Rows of one subset from a local hub-layout folder (parquet, read with pyarrow)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with datasets
        raise MMEBDataError("reading MMEB parquet needs pyarrow: pip install pyarrow") from exc
    rows: list[dict] = []
    for f in find_parquet(data_dir, subset, split):
        table = pq.read_table(f)
        missing = [c for c in ("qry_text", "tgt_text") if c not in table.column_names]
        if missing:
            raise MMEBDataError(f"{f}: missing column(s) {missing}; expected {list(COLUMNS)}")
        rows.extend(table.select([c for c in COLUMNS if c in table.column_names]).to_pylist())
    return rows


def find_image_root(data_dir: Path, image_paths: Iterable[str]) -> Path:
    """Guess where the relative image paths live below ``data_dir``.

    Tries ``eval_images/``, ``images/eval_images/``, ``images/`` and ``data_dir`` itself, and picks the
    one where most of the first image paths exist.

    Raises:
        MMEBDataError: none of the probed images exists under any guess.
    """
    probes = [p for p in image_paths if p][:_ROOT_PROBES]
    roots = [Path(data_dir) / g for g in _IMAGE_ROOT_GUESSES]
    if not probes:
        return roots[-1]
    hits = [sum((root / p).is_file() for p in probes) for root in roots]
    if max(hits) == 0:
        raise MMEBDataError(
            f"none of {len(probes)} images (e.g. {probes[0]!r}) found under {[str(r) for r in roots]}; "
            "unpack images.zip there or pass --image-root"
        )
    return roots[hits.index(max(hits))]


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _offline_error(what: str, exc: BaseException | None = None) -> MMEBDataError:
    reason = f" ({type(exc).__name__}: {exc})" if exc is not None else " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)"
    return MMEBDataError(
        f"cannot fetch {what} from the hub{reason}. Download it once with network access "
        f"(`huggingface-cli download {HUB_DATASET} --repo-type dataset --local-dir DIR`, then unzip "
        f"{HUB_IMAGES_FILE} in DIR) and pass --data-dir DIR"
    )


def read_hub_rows(subset: str, *, split: str = "test", dataset: str = HUB_DATASET, revision: str | None = None):
    """Rows of one subset from the hub through ``datasets``.

    Raises:
        MMEBDataError: offline, ``datasets`` missing, or the hub cannot be reached.
    """
    if _offline():
        raise _offline_error(f"{dataset}/{subset}")
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise MMEBDataError("hub loading needs `datasets` (pip install datasets); or use --data-dir") from exc
    try:
        ds = load_dataset(dataset, subset, split=split, revision=revision)
    except (ConnectionError, OSError) as exc:
        raise _offline_error(f"{dataset}/{subset}", exc) from exc
    return ds.select_columns([c for c in COLUMNS if c in ds.column_names])


def hub_image_root(cache_dir: Path, *, dataset: str = HUB_DATASET, revision: str | None = None) -> Path:
    """Download and unpack ``images.zip`` once (atomically) and return the unpacked folder.

    Raises:
        MMEBDataError: offline or unreachable hub.
    """
    target = Path(cache_dir) / "mmeb-images" / dataset.replace("/", "__") / (revision or "main")
    if (target / ".complete").is_file():
        return target
    if _offline():
        raise _offline_error(f"{dataset}/{HUB_IMAGES_FILE}")
    try:
        from huggingface_hub import hf_hub_download

        archive = hf_hub_download(dataset, HUB_IMAGES_FILE, repo_type="dataset", revision=revision)
    except (ConnectionError, OSError) as exc:
        raise _offline_error(f"{dataset}/{HUB_IMAGES_FILE}", exc) from exc
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("unpacking %s to %s", archive, target)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp)  # zipfile strips absolute and '..' member paths
    (tmp / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)
    return target
