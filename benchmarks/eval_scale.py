"""Evaluation at MSMT17 scale: ``reid.evaluation.rank_metrics`` against a brute-force NumPy reference.

Usage (from the repository root)::

    .venv/bin/python benchmarks/eval_scale.py [--fractions 0.0625 0.125 0.25] [--no-full] [--out FILE]

Data: random ``--dim``-d float32 features with MSMT17's test structure (Wei et al., CVPR 2018):
11,659 queries and 82,161 gallery images of 3,060 identities over 15 cameras. Each identity gets a
random centre and each image ``centre + noise`` (so the metrics are neither 0 nor 1); pids and
camids are drawn per image. A *fraction* f scales Q, G and the number of identities by f.

Measured, each in a fresh subprocess (so its peak RSS, ``ru_maxrss``, is its own):

* ``reference``: the full ``Q x G`` squared-euclidean distance matrix in NumPy, a full ``argsort``
  of every row, then torchreid's ``eval_market1501`` protocol (same-pid-same-camera and pid -1
  removed, CMC, AP) and mINP: what fast-reid/torchreid do, O(Q x G) memory;
* ``ours``: ``rank_metrics(..., chunk_size=--chunk)`` on the same data (query chunks, O(chunk x G)).

At each fraction both run and must agree (Rank-1, mAP, mINP to 1e-4: both rank float32 distances,
but NumPy's and torch's matmuls round differently, so near-ties can swap); at full size only ours runs
(the reference would need ~11 GB: a 3.8 GB distance matrix and a 7.7 GB int64 argsort). Times are
wall seconds of the metric computation only (data generation excluded); peak RSS includes the
features. With ``--device cuda`` ours runs on the GPU (``torch.cuda.max_memory_allocated`` is
reported too).

Prints a Markdown section for ``benchmarks/RESULTS.md``; ``--out FILE`` also writes it atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MSMT17 = {"queries": 11659, "gallery": 82161, "ids": 3060, "cameras": 15}


def make_data(fraction: float, dim: int, seed: int) -> dict:
    """Random MSMT17-like features and labels at ``fraction`` of the full size (module docstring)."""
    rng = np.random.default_rng(seed)
    nq = max(2, round(MSMT17["queries"] * fraction))
    ng = max(2, round(MSMT17["gallery"] * fraction))
    ids = max(2, round(MSMT17["ids"] * fraction))
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    q_pids = rng.integers(0, ids, nq)
    g_pids = rng.integers(0, ids, ng)
    noise = np.float32(4.0)  # same-id and different-id distance distributions overlap: mAP well below 1
    qf = centres[q_pids] + noise * rng.standard_normal((nq, dim), dtype=np.float32)
    gf = centres[g_pids] + noise * rng.standard_normal((ng, dim), dtype=np.float32)
    return {"qf": qf, "gf": gf, "q_pids": q_pids, "g_pids": g_pids,
            "q_camids": rng.integers(0, MSMT17["cameras"], nq), "g_camids": rng.integers(0, MSMT17["cameras"], ng)}


def reference_metrics(d: dict, max_rank: int = 50) -> dict:
    """Brute force: full distance matrix + full argsort, torchreid's protocol, plus mINP."""
    qf, gf = d["qf"], d["gf"]
    dist = (qf * qf).sum(1, keepdims=True) - 2 * qf @ gf.T + (gf * gf).sum(1)[None]
    order = np.argsort(dist, axis=1, kind="stable")
    del dist
    cmc_sum, aps, inps = np.zeros(max_rank), [], []
    for i in range(len(qf)):
        o = order[i]
        keep = ~(((d["g_pids"][o] == d["q_pids"][i]) & (d["g_camids"][o] == d["q_camids"][i])) | (d["g_pids"][o] == -1))
        match = (d["g_pids"][o][keep] == d["q_pids"][i]).astype(np.float64)
        if not match.any():
            continue
        ranks = np.flatnonzero(match) + 1
        cmc = np.zeros(max_rank)
        cmc[min(ranks[0], max_rank + 1) - 1:] = 1 if ranks[0] <= max_rank else 0
        cmc_sum += cmc
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        inps.append(len(ranks) / ranks[-1])
    n = len(aps)
    return {"rank1": cmc_sum[0] / n, "mAP": float(np.mean(aps)), "mINP": float(np.mean(inps))}


def worker(impl: str, fraction: float, dim: int, seed: int, chunk: int, device: str) -> dict:
    """Generate the data, time one evaluation, report metrics and peak memory (run in a subprocess)."""
    d = make_data(fraction, dim, seed)
    out: dict = {"queries": len(d["qf"]), "gallery": len(d["gf"])}
    if impl == "reference":
        out["rss_before_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        res = reference_metrics(d)
    else:
        import torch

        from reid.evaluation.rank_metrics import rank_metrics

        torch.set_num_threads(os.cpu_count() or 1)
        qf, gf = torch.from_numpy(d["qf"]), torch.from_numpy(d["gf"])
        if device == "cuda":
            qf, gf = qf.cuda(), gf.cuda()
            torch.cuda.synchronize()
        out["rss_before_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        r = rank_metrics(qf, gf, d["q_pids"], d["g_pids"], d["q_camids"], d["g_camids"], chunk_size=chunk)
        res = {"rank1": float(r["cmc"][0]), "mAP": r["mAP"], "mINP": r["mINP"]}
        if device == "cuda":
            torch.cuda.synchronize()
            out["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(res)
    return out


def run(impl: str, fraction: float, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--fraction", str(fraction), "--dim", str(args.dim),
           "--seed", str(args.seed), "--chunk", str(args.chunk), "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} at fraction {fraction} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[eval_scale] {impl:9s} f={fraction:<7g} Q={res['queries']} G={res['gallery']}: "
          f"{res['seconds']:.2f} s, peak RSS {res['peak_rss_mib']:.0f} MiB, mAP {res['mAP']:.6f}", flush=True)
    return res


def markdown(rows: list[dict], args: argparse.Namespace, wall: float) -> str:
    import torch

    load = os.getloadavg()
    lines = [
        f"## Evaluation at MSMT17 scale: rank_metrics vs a brute-force reference ({args.device.upper()})", "",
        f"- Machine: {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}; load average after "
        f"{load[0]:.2f}.",
        f"- Command: `.venv/bin/python benchmarks/eval_scale.py {' '.join(sys.argv[1:])}` ({wall:.0f} s in all).",
        f"- Random {args.dim}-d features with MSMT17's structure (11,659 queries, 82,161 gallery, 3,060 ids, "
        f"15 cameras; a fraction scales all three), seed {args.seed}; ours with chunk_size {args.chunk}; "
        "each measurement in its own process (peak RSS = `ru_maxrss`, features included).", "",
        "| fraction | Q × G | reference s | ours s | speed-up | reference peak RSS MiB (before the metric) "
        "| ours peak RSS MiB (before: data + torch) | max metric difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ref, ours = r.get("reference"), r["ours"]
        if ref:
            diff = max(abs(ref[k] - ours[k]) for k in ("rank1", "mAP", "mINP"))
            ref_s, speedup = f"{ref['seconds']:.2f}", f"{ref['seconds'] / ours['seconds']:.1f}×"
            ref_rss, diff_s = f"{ref['peak_rss_mib']:.0f} ({ref['rss_before_mib']:.0f})", f"{diff:.1e}"
        else:
            ref_s, speedup, ref_rss, diff_s = "–", "–", "– (needs ~11 GB)", "–"
        lines.append(f"| {r['fraction']:g} | {ours['queries']:,} × {ours['gallery']:,} | {ref_s} | "
                     f"{ours['seconds']:.2f} | {speedup} | {ref_rss} | {ours['peak_rss_mib']:.0f} "
                     f"({ours['rss_before_mib']:.0f}) | {diff_s} |")
    if rows[-1]["fraction"] == 1.0:
        full = rows[-1]["ours"]
        lines += ["", f"- Full size, ours: Rank-1 {full['rank1']:.4f}, mAP {full['mAP']:.4f}, mINP {full['mINP']:.4f}"
                  + (f", GPU peak {full['gpu_peak_mib']:.0f} MiB" if "gpu_peak_mib" in full else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fractions", type=float, nargs="*", default=[0.0625, 0.125, 0.25],
                   help="sizes (fractions of MSMT17) at which both implementations run")
    p.add_argument("--no-full", action="store_true", help="skip ours at full MSMT17 size")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--chunk", type=int, default=256, help="rank_metrics chunk_size (queries per block)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--out", type=Path, help="also write the Markdown section here (atomically)")
    p.add_argument("--worker", choices=["reference", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--fraction", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.fraction, args.dim, args.seed, args.chunk, args.device)))
        return 0
    if any(not 0 < f <= 1 for f in args.fractions) or args.dim < 1 or args.chunk < 1:
        p.error("fractions must be in (0, 1], --dim and --chunk >= 1")
    t0 = time.perf_counter()
    rows = []
    for f in args.fractions:
        ref, ours = run("reference", f, args), run("ours", f, args)
        diff = max(abs(ref[k] - ours[k]) for k in ("rank1", "mAP", "mINP"))
        if diff > 1e-4:
            raise SystemExit(f"fraction {f}: ours and the reference disagree by {diff:.2e}")
        rows.append({"fraction": f, "reference": ref, "ours": ours})
    if not args.no_full:
        rows.append({"fraction": 1.0, "ours": run("ours", 1.0, args)})
    text = markdown(rows, args, time.perf_counter() - t0)
    print(text)
    if args.out:
        from reid.io import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
