"""Scoring time and peak memory (moca_bench.scoring vs a plain full-matrix product), and the hook's start-up cost.

Scoring: Q queries x P passages of random unit vectors (default 1k x 100k, dim 2048, fp32), handed over
as vidore's evaluators do, i.e. lists of 1-D tensors. Each variant runs in its own process so that peak
memory is its own; the inputs are built first, then the peak-RSS counter is reset, so "extra" is what
scoring itself adds on top of the inputs (the returned matrix included):

- plain: ``torch.stack(q) @ torch.stack(p).T`` on the CPU (what the reference and vidore's retrievers do,
  here in fp32);
- blocked: :func:`moca_bench.scoring.score_matrix` on the CPU (same output, blocks of 64 MiB);
- topk: :func:`moca_bench.scoring.topk_scores` with k=100 (no full matrix at all).
On a CUDA machine the two moca variants also run on the GPU.

Hook start-up: ``python -c pass`` in two throw-away venvs that hold this one's packages as symlinks, one
with and one without ``moca_plugins_hook.pth``, alternated over many runs; plus ``-X importtime`` for
the hook modules alone. Writes ``results/benchmarks/scoring.json``.

    OMP_NUM_THREADS=1 python -m benchmarks.scoring [--queries 1000] [--passages 100000] [--dim 2048]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import peak_rss_mb, reset_peak_rss, write_result

logger = logging.getLogger(__name__)
VARIANTS = ("plain", "blocked", "topk")
HOOK_PTH = "moca_plugins_hook.pth"


def _inputs(n: int, dim: int, seed: int):
    """``n`` random unit vectors as a list of 1-D views of one (n, dim) tensor (no extra copy)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    x /= x.norm(dim=1, keepdim=True)
    return x, list(torch.unbind(x))


def worker(variant: str, n_q: int, n_p: int, dim: int, repeats: int, device: str) -> dict:
    """Run one variant ``repeats`` times in this process; return times, extra peak RSS and a correctness check."""
    import torch

    from moca_bench.scoring import score_matrix, topk_scores

    torch.set_num_threads(1)
    q2d, q = _inputs(n_q, dim, 0)
    p2d, p = _inputs(n_p, dim, 1)
    run = {
        "plain": lambda: torch.stack(q) @ torch.stack(p).T,
        "blocked": lambda: score_matrix(q, p, device=device),
        "topk": lambda: topk_scores(q, p, 100, device=device),
    }[variant]
    times, extras = [], []
    for _ in range(repeats):
        rss_before = _current_rss_mb()
        reset_peak_rss()
        t0 = time.perf_counter()
        out = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        extras.append(peak_rss_mb() - rss_before)
        del out
    out = run()
    ref = q2d[:64] @ p2d.T  # (64, P): the first rows, exactly as the full product computes them
    if variant == "topk":
        want = ref.topk(100, dim=1)
        check = {"max_abs_diff": float((out[0][:64] - want.values).abs().max()), "k": 100}
    else:
        check = {"max_abs_diff": float((out[:64] - ref).abs().max()), "shape": list(out.shape)}
    return {"seconds": times, "extra_peak_mb": extras, "check": check, "device": device}


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def scoring_results(args: argparse.Namespace) -> dict:
    """Each variant (and device) in a fresh subprocess of this script."""
    import torch

    jobs = [(v, "cpu") for v in VARIANTS]
    if torch.cuda.is_available():
        jobs += [("blocked", "cuda"), ("topk", "cuda")]
    results = {}
    for variant, device in jobs:
        cmd = [sys.executable, "-m", "benchmarks.scoring", "--worker", variant, "--device", device]
        cmd += ["--queries", str(args.queries), "--passages", str(args.passages), "--dim", str(args.dim)]
        cmd += ["--repeats", str(args.repeats)]
        logger.info("scoring: %s on %s", variant, device)
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r["median_seconds"] = statistics.median(r["seconds"])
        r["median_extra_peak_mb"] = statistics.median(r["extra_peak_mb"])
        results[f"{variant}_{device}"] = r
    plain = results["plain_cpu"]
    for r in results.values():
        r["time_vs_plain"] = round(r["median_seconds"] / plain["median_seconds"], 3)
        r["extra_memory_vs_plain"] = round(r["median_extra_peak_mb"] / plain["median_extra_peak_mb"], 3)
    return results


def _venv(dest: Path, *, with_hook: bool) -> Path:
    """A venv whose site-packages links every entry of this one's (minus the hook's .pth if asked)."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    lib = dest / "lib" / site.parent.name / "site-packages"
    lib.mkdir(parents=True)
    for entry in site.iterdir():
        if with_hook or entry.name != HOOK_PTH:
            (lib / entry.name).symlink_to(entry)
    (dest / "bin").mkdir()
    base = Path(sys._base_executable)
    (dest / "bin" / "python").symlink_to(base.resolve())
    (dest / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n")
    return dest / "bin" / "python"


def _startup_times(pythons: dict[bool, str], runs: int, env: dict[str, str]) -> dict:
    """``python -c pass`` wall times with / without the hook (alternating), and the hook's own import time."""
    for python in pythons.values():  # warm-up: fills the bytecode cache when the environment allows one
        subprocess.run([python, "-c", "pass"], check=True, env=env)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(runs):
        for h, python in pythons.items():
            t0 = time.perf_counter()
            subprocess.run([python, "-c", "pass"], check=True, env=env)
            times[h].append((time.perf_counter() - t0) * 1000)
    self_us = []
    for _ in range(20):
        imp = subprocess.run([pythons[True], "-X", "importtime", "-c", "pass"], capture_output=True, text=True, env=env)
        lines = [ln for ln in imp.stderr.splitlines() if ln.endswith("moca_plugins._hook")]
        self_us.append(sum(int(ln.split("|")[1]) for ln in lines))  # cumulative: includes the package
    stats = {h: {"median_ms": statistics.median(t), "min_ms": min(t)} for h, t in times.items()}
    return {
        "with_hook": stats[True],
        "without_hook": stats[False],
        "overhead_median_ms": round(stats[True]["median_ms"] - stats[False]["median_ms"], 3),
        "overhead_min_ms": round(stats[True]["min_ms"] - stats[False]["min_ms"], 3),
        "hook_import_cumulative_median_ms": statistics.median(self_us) / 1000,
    }


def hook_results(runs: int) -> dict:
    """Start-up cost of the hook, with a bytecode cache (as after ``pip install``) and as this shell is set up.

    This machine sets PYTHONDONTWRITEBYTECODE=1, so an editable checkout recompiles ``_hook.py`` at every
    start; the cached mode points PYTHONPYCACHEPREFIX at a scratch folder instead (both venvs alike).
    """
    with tempfile.TemporaryDirectory() as tmp:
        pythons = {h: str(_venv(Path(tmp) / f"hook-{h}", with_hook=h)) for h in (True, False)}
        probe = "import sys; print('moca_plugins._hook' in sys.modules)"
        check = subprocess.run([pythons[True], "-c", probe], capture_output=True, text=True, check=True)
        assert check.stdout.strip() == "True", "the hook did not load in the venv with the .pth"
        cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        return {
            "runs_each": runs,
            "bytecode_cached": _startup_times(pythons, runs, cached),
            "as_configured": _startup_times(pythons, runs, dict(os.environ)),
            "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
        }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run a worker (internal) or the whole benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1000, help="number of queries")
    parser.add_argument("--passages", type=int, default=100_000, help="number of passages")
    parser.add_argument("--dim", type=int, default=2048, help="embedding dimension")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per variant")
    parser.add_argument("--startup-runs", type=int, default=200, help="interpreter starts per hook variant")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(args.worker, args.queries, args.passages, args.dim, args.repeats, args.device)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    payload = {
        "config": {k: v for k, v in vars(args).items() if k not in ("worker", "device")},
        "hook_startup": hook_results(args.startup_runs),
        "scoring": scoring_results(args),
    }
    path = write_result("scoring", payload)
    logger.info("wrote %s\n%s", path, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
