"""``build_world(cfg, out_dir)``: render the world and write every format the toolkit reads.

Under ``out_dir``:

- ``base/train.jsonl`` and ``cpt/train.jsonl``: two independent unlabelled interleaved corpora, one for
  the causal base-model stage and one for CPT (the paper's CPT brings data the base has not seen);
- ``cl/<task>.jsonl``: contrastive pairs with hard negatives (the labelled set, small);
- ``val/Val_<task>/test-00000-of-00001.parquet``: the CL validation split (fresh pairs of the training
  distribution, never trained on) in the MMEB layout, images under ``val/images``;
- ``mmeb/<Subset>/test-00000-of-00001.parquet``: the TIGER-Lab/MMEB-eval layout, images under ``mmeb/images``;
- ``vidore/demo_pages_<kk>``: ViDoRe BEIR page pools (the folder ``vidore/`` is a local collection);
- ``clusters.json``: each evaluation query's cluster key (the bootstrap's independent unit), per subset and
  for the pages;
- ``world.json``: the manifest (sizes, subsets and their meta-tasks, CL tasks, paths).

Splits never share an image: digit bitmaps are partitioned (evaluation / CL / unlabelled), and every
shape, scene and page image is a fresh render with its own jitter. Evaluation page queries and retrieval
captions never occur in a training text (docs/demo-protocol.md §3). Each part has its own random stream,
so resizing one part leaves the others unchanged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from demo.world.common import MMEB_SUBSETS, ImageWriter, WorldConfig, write_jsonl
from demo.world.eval_data import mmeb_subsets, write_parquet, write_vidore
from demo.world.train_data import CL_TASKS, VAL_SUBSETS, unlabelled_records, validation_subsets

logger = logging.getLogger(__name__)

CORPORA = {"cpt": 2, "base": 5}  # unlabelled corpus -> its random stream


def build_world(cfg: WorldConfig, out_dir: str | Path, *, show_progress: bool = True) -> dict:
    """Render the world and write all formats under ``out_dir``; returns the manifest (also ``world.json``).

    Skips the work when ``out_dir/world.json`` exists with the same config (the world is a pure function
    of the config).
    """
    out = Path(out_dir)
    manifest_path = out / "world.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") == asdict(cfg):
            logger.info("world already built in %s", out)
            return manifest
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"config": asdict(cfg), "cl_tasks": {}, "mmeb_subsets": {}}
    steps = tqdm(total=4 + len(CORPORA), desc="building world", disable=not show_progress)

    rng = np.random.default_rng([cfg.seed, 1])
    save = ImageWriter(out / "cl", "images")
    for task, n in cfg.cl_pairs.items():
        if n <= 0:
            continue
        rows = CL_TASKS[task](cfg, rng, save, n)
        write_jsonl(out / "cl" / f"{task}.jsonl", rows)
        manifest["cl_tasks"][task] = {"path": f"cl/{task}.jsonl", "rows": len(rows)}
    manifest["cl_images"] = save.count
    steps.update()

    for corpus, stream in CORPORA.items():
        save = ImageWriter(out / corpus, "images")
        records = unlabelled_records(cfg, np.random.default_rng([cfg.seed, stream]), save)
        write_jsonl(out / corpus / "train.jsonl", records)
        manifest[corpus] = {"path": f"{corpus}/train.jsonl", "records": len(records), "images": save.count}
        steps.update()

    rng = np.random.default_rng([cfg.seed, 6])
    save = ImageWriter(out / "val", "images")
    manifest["val_subsets"] = {}
    for subset, rows in validation_subsets(cfg, rng, save):
        write_parquet(out / "val" / subset / "test-00000-of-00001.parquet", rows)
        manifest["val_subsets"][subset] = {"meta_task": VAL_SUBSETS[subset], "rows": len(rows)}
    steps.update()

    clusters: dict[str, list[str]] = {}
    rng = np.random.default_rng([cfg.seed, 3])
    save = ImageWriter(out / "mmeb" / "images", "eval")
    for subset, rows, keys in mmeb_subsets(cfg, rng, save):
        write_parquet(out / "mmeb" / subset / "test-00000-of-00001.parquet", rows)
        manifest["mmeb_subsets"][subset] = {"meta_task": MMEB_SUBSETS[subset], "rows": len(rows)}
        clusters[subset] = keys
    manifest["mmeb_images"] = "mmeb/images"
    steps.update()

    rng = np.random.default_rng([cfg.seed, 4])
    sizes, clusters["pages"] = write_vidore(cfg, rng, out / "vidore")
    manifest["vidore"] = {"path": "vidore", **sizes}
    (out / "clusters.json").write_text(json.dumps(clusters) + "\n")
    steps.update()
    steps.close()

    tmp = manifest_path.with_name("world.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return manifest
