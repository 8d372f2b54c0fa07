"""MMEB-V2 tables and media: local copies in the hub layout or the hub itself, never pickled.

Tables (rows, BEIR queries / qrels / corpus) come from
- ``--data-dir DIR``: one folder per hub repository, ``DIR/<owner>/<name>/`` as ``huggingface-cli download
  <owner>/<name> --repo-type dataset --local-dir DIR/<owner>/<name>`` leaves it. Within it the parquet files
  of a (config, split) are found by the usual hub layouts (``<config>/<split>-*.parquet``,
  ``data/<split>-*.parquet``, ``default/<split>-*.parquet``, ...); or
- the hub through ``datasets.load_dataset(repo, config, split=..., revision=pin)``.

Media live under the unpacked ``TIGER-Lab/MMEB-V2`` repository (``image-tasks/``, ``video-tasks/frames/``,
``visdoc-tasks/``): ``--image-root`` (images and document pages) and ``--frame-root`` (video frames), or the
hub (:func:`hub_media_root` downloads and unpacks the archives the selected modalities need). Document
pages missing from disk are written from the corpus ``image`` column, as the reference does, but into the
cache instead of the data folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moca_bench.mmeb.data import MMEBDataError, _offline
from moca_bench.mmeb.v2.tasks import V2Task

logger = logging.getLogger(__name__)

MEDIA_REPO = "TIGER-Lab/MMEB-V2"
# The 20 MVBench configs the reference concatenates, in its order (mvbench_dataset.py subset_meta).
MVBENCH_SUBSETS = (
    "episodic_reasoning", "action_sequence", "action_prediction", "action_antonym", "fine_grained_action",
    "unexpected_action", "object_existence", "object_interaction", "object_shuffle", "moving_direction",
    "action_localization", "scene_transition", "action_count", "moving_count", "moving_attribute", "state_change",
    "fine_grained_pose", "character_order", "egocentric_navigation", "counterfactual_inference",
)  # fmt: skip
# (archive files in MEDIA_REPO, folder they unpack into, relative to the repo root): download_data.sh
_ARCHIVES = {
    "image": [(("image-tasks/mmeb_v1.tar.gz",), "image-tasks")],
    "video": [(("video-tasks/frames/video_cls.tar.gz",), "video-tasks/frames/video_cls"),
              (("video-tasks/frames/video_ret.tar.gz",), "video-tasks/frames/video_ret"),
              (("video-tasks/frames/video_mret.tar.gz",), "video-tasks/frames"),
              (tuple(f"video-tasks/frames/video_qa.tar.gz-0{i}" for i in range(5)), "video-tasks/frames")],
    "visdoc": [],  # pages come from the corpus tables
}  # fmt: skip


@dataclass
class TableSource:
    """Where tables come from: ``data_dir`` (local hub mirrors) or the hub, with optional revision pins."""

    data_dir: Path | None = None
    pins: Mapping[str, str] = field(default_factory=dict)
    """repo id -> revision."""

    def describe(self, repo: str) -> str:
        """Where ``repo`` is read from (for the results file)."""
        if self.data_dir is not None:
            return str(self.data_dir / repo)
        return f"hub:{repo}@{self.pins.get(repo, 'main (unpinned)')}"


def _patterns(config: str | None, split: str) -> list[str]:
    if config is None:
        return [f"data/{split}-*.parquet", f"default/{split}-*.parquet", f"{split}-*.parquet",
                f"data/{split}/*.parquet"]
    return [f"{config}/{split}-*.parquet", f"{config}/{split}/*.parquet", f"data/{config}/{split}-*.parquet",
            f"{config}/data/{split}-*.parquet", f"data/{config}-{split}-*.parquet"]  # fmt: skip


def find_parquet(root: Path, repo: str, config: str | None, split: str) -> list[Path]:
    """Parquet files of one (config, split) in a local copy ``root/<owner>/<name>``.

    Raises:
        MMEBDataError: none found (the message lists the layouts tried).
    """
    folder = Path(root) / repo
    for pattern in _patterns(config, split):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise MMEBDataError(
        f"no parquet for {repo} (config {config or 'default'}, split {split}) under {folder}; tried "
        f"{', '.join(_patterns(config, split))}. Download it with `huggingface-cli download {repo} --repo-type "
        f"dataset --local-dir {folder}` or drop --data-dir to read the hub"
    )


def _hub_dataset(repo: str, config: str | None, split: str, source: TableSource):
    if _offline():
        raise MMEBDataError(f"cannot read {repo} from the hub (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set); "
                            f"download it and pass --data-dir (docs/mmeb.md)")  # fmt: skip
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise MMEBDataError("hub loading needs `datasets` (pip install datasets); or use --data-dir") from exc
    try:
        return load_dataset(repo, config, split=split, revision=source.pins.get(repo))
    except (ConnectionError, OSError) as exc:
        raise MMEBDataError(f"cannot read {repo} from the hub ({type(exc).__name__}: {exc}); use --data-dir") from exc


def read_table(source: TableSource, repo: str, config: str | None, split: str, columns=None) -> list[dict]:
    """All rows of one table as dicts (``columns``: keep only these, when present)."""
    if source.data_dir is None:
        ds = _hub_dataset(repo, config, split, source)
        keep = [c for c in (columns or ds.column_names) if c in ds.column_names]
        return ds.select_columns(keep).to_list()
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for f in find_parquet(source.data_dir, repo, config, split):
        table = pq.read_table(f)
        keep = [c for c in (columns or table.column_names) if c in table.column_names]
        rows.extend(table.select(keep).to_pylist())
    return rows


def read_rows(task: V2Task, source: TableSource) -> tuple[list[dict], list[str]]:
    """The rows of an image or video task (MVBench: its 20 configs concatenated with a ``subset`` column).

    Returns:
        (rows, notes): notes name MVBench configs missing from a local copy (skipped with a warning).
    """
    if task.parser != "mvbench":
        return read_table(source, task.repo, task.config, task.split), []
    rows, notes = [], []
    for subset in MVBENCH_SUBSETS:
        try:
            part = read_table(source, task.repo, subset, task.split)
        except MMEBDataError:
            if source.data_dir is None:
                raise
            notes.append(f"config {subset} missing from the local copy")
            continue
        rows.extend({**r, "subset": subset} for r in part)
    if notes:
        logger.warning("MVBench: %d of %d configs missing under %s (skipped; the score covers the rest): %s",
                       len(notes), len(MVBENCH_SUBSETS), source.data_dir, ", ".join(n.split()[1] for n in notes))
    return rows, notes


def iter_corpus(source: TableSource, task: V2Task, *, with_images: bool) -> Iterator[dict]:
    """Corpus rows (``corpus-id``, and ``image`` as ``{"bytes": ...}`` when ``with_images``), streamed."""
    cols = ["corpus-id", "image"] if with_images else ["corpus-id"]
    if source.data_dir is None:
        ds = _hub_dataset(task.repo, "corpus", task.split, source)
        if with_images:
            from datasets import Image as ImageFeature

            ds = ds.cast_column("image", ImageFeature(decode=False))
        yield from ds.select_columns(cols)
        return
    import pyarrow.parquet as pq

    for f in find_parquet(source.data_dir, task.repo, "corpus", task.split):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=256, columns=cols):
            yield from batch.to_pylist()


def media_dir(task: V2Task, root: Path | None, overrides: Mapping[str, str]) -> Path | None:
    """The task's media folder: an override, else the first of ``task.media`` that exists under ``root``.

    A visual-document task may have none (None): its pages are then written from the corpus.

    Raises:
        MMEBDataError: nothing found (the message lists the folders tried and how to override them).
    """
    if task.name in overrides:
        path = Path(overrides[task.name]).expanduser()
        path = path if path.is_absolute() or root is None else root / path
        if not path.is_dir():
            raise MMEBDataError(f"{task.name}: --media-path folder {path} does not exist")
        return path
    tried = [root / rel for rel in task.media] if root is not None else []
    for path in tried:
        if path.is_dir():
            return path
    if task.modality == "visdoc":  # pages can be written from the corpus
        return None
    raise MMEBDataError(
        f"{task.name}: no media folder among {[str(p) for p in tried] or task.media}; unpack {MEDIA_REPO} "
        f"(docs/mmeb.md) and pass --image-root / --frame-root, or --media-path {task.name}=DIR"
    )


def _safe_extract(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tf:
        data_filter = getattr(tarfile, "data_filter", None)  # refuses absolute paths, '..' and links out of target
        if data_filter is not None:
            tf.extractall(target, filter=data_filter)
        else:  # pragma: no cover - Python without the 3.11.4 / 3.10.12 backport
            tf.extractall(target)  # noqa: S202


def hub_media_root(cache_dir: Path, modalities: set[str], *, revision: str | None = None) -> Path:
    """Download and unpack the ``TIGER-Lab/MMEB-V2`` archives the modalities need (once, atomically each).

    Follows the reference's ``download_data.sh``: ``image-tasks/mmeb_v1.tar.gz`` (then ``MMEB/*`` moved up),
    the four frame archives (``video_qa`` in five parts, concatenated). Tens of GB for video.

    Raises:
        MMEBDataError: offline or unreachable hub.
    """
    root = Path(cache_dir) / "mmeb-v2-media" / (revision or "main")
    for modality in sorted(modalities):
        for files, dest in _ARCHIVES[modality]:
            done = root / ".done" / (files[0].replace("/", "__") + ".complete")
            if done.is_file():
                continue
            if _offline():
                raise MMEBDataError(f"cannot download {MEDIA_REPO}/{files[0]} (offline); unpack it yourself and pass "
                                    "--image-root / --frame-root (docs/mmeb.md)")  # fmt: skip
            from huggingface_hub import hf_hub_download

            try:
                parts = [Path(hf_hub_download(MEDIA_REPO, f, repo_type="dataset", revision=revision)) for f in files]
            except (ConnectionError, OSError) as exc:
                raise MMEBDataError(f"cannot download {MEDIA_REPO}/{files[0]}: {exc}") from exc
            archive = parts[0]
            if len(parts) > 1:  # split archive: concatenate the parts
                archive = root / ".done" / "joined.tar.gz"
                archive.parent.mkdir(parents=True, exist_ok=True)
                with archive.open("wb") as out:
                    for p in parts:
                        with p.open("rb") as f:
                            shutil.copyfileobj(f, out)
            logger.info("unpacking %s into %s", files[0], root / dest)
            _safe_extract(archive, root / dest)
            if files[0].endswith("mmeb_v1.tar.gz") and (root / dest / "MMEB").is_dir():
                for child in (root / dest / "MMEB").iterdir():
                    os.replace(child, root / dest / child.name)
            if len(parts) > 1:
                archive.unlink()
            done.parent.mkdir(parents=True, exist_ok=True)
            done.touch()
    return root
