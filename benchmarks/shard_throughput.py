"""Throughput and peak memory of the ``prepare`` + ``shard`` stages against ``tar`` of the same files.

Usage (from the repository root)::

    .venv/bin/python benchmarks/shard_throughput.py --sizes 20000 100000 --workdir /tmp/shardbench

For each size N:

1. **Data** (not timed). N synthetic 128x64 JPEGs in the ``MSMT17_V1`` layout, written by
   :func:`reid.data.synthetic.write_msmt17` into ``<workdir>/msmt17_<N>/MSMT17_V1`` with
   ``N/20`` persons (half train, half test), 15 cameras, 4 cameras per person, 5 images per
   (person, camera); exactly N images when N is a multiple of 20. The config is saved beside it
   (``synth_config.json``); a later run with the same config reuses the folder.
2. **prepare** and **shard**, for each variant (``--variants``, default all: ``default`` = the
   params.yaml defaults, whose data checks decode every JPEG; ``header`` = header-only JPEG check;
   ``nochecks`` = data checks off), each stage in a FRESH Python process running the stage's own
   ``main()`` (``pipeline.prepare`` / ``pipeline.shard``) on a copy of the repository's
   ``params.yaml`` in which only ``datasets.msmt17.root`` (and the variant's keys) change. So
   everything else is the params.yaml default: ``data_checks`` (2 worker processes, fatal),
   ``min_images = sampler.k`` (4), the protocol, manifest, report and stats writes, and the shards
   with ``shard.target_bytes`` and ``shard.workers`` (2). Outputs go to
   ``<workdir>/msmt17_<N>/out/{manifests,shards}`` (removed before each variant, as DVC does).
   Wall time is measured by this script around the whole child process (interpreter start and
   imports included, as a DVC stage pays them); the child also reports a per-step breakdown
   (parse / data checks / protocol / report / manifest CSV; write_shards) with the process RSS
   after each step.
3. **tar**: ``tar -cf <workdir>/msmt17_<N>/bench.tar -C <dataset root> .`` (all files, list files
   included; same disk), run after the pipeline phases. The ``sync`` that follows it is timed
   separately and shown for information (the shard writer fsyncs every file it writes; tar does
   not), but the goal compares with plain ``tar``.

Page cache: before the pipeline phases and again before tar, the script runs ``sync`` and reads
every file of the dataset once, so both contenders start from the same warm cache of their input.

Units: wall time in seconds; images/s = N / wall s; MB/s = total input JPEG bytes / 10^6 / wall s
(the same input bytes for every contender); peak RSS in MiB = ``ru_maxrss`` of the phase's
process tree, from GNU ``/usr/bin/time -f %M`` wrapped around the phase (the ``wait4``/
``getrusage(RUSAGE_CHILDREN)`` value of that one child: the largest single process of the tree, i.e.
the stage process or one of its data-check workers; not a sum). "ratio vs tar" = (prepare+shard images/s) /
(tar images/s). "RSS 100k/20k" style ratios compare the peak RSS of the largest and smallest size.

Goals checked (from the issue): prepare+shard throughput >= 0.8 x tar throughput, and peak RSS at
the largest size within 15 % of the peak RSS at the smallest size.

Results are printed and written as Markdown to ``<workdir>/results.md`` (or ``--output``), the
raw numbers as JSON beside it (``results.json``).

``--cprofile`` runs the two stage processes under cProfile (slower; the timings are then not
comparable) and writes ``<workdir>/msmt17_<N>/{prepare,shard}.prof`` plus a text summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
DATASET = "msmt17"
MIB = 1024 * 1024
MB = 1e6


def log(msg: str) -> None:
    print(f"[shardbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# child side: one stage in this (fresh) process, with a per-step breakdown


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def _maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _Steps:
    """Accumulates time and call counts per step; records RSS after each call."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, float]] = {}

    def wrap(self, label: str, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                d = self.data.setdefault(label, {"seconds": 0.0, "calls": 0})
                d["seconds"] += time.perf_counter() - t0
                d["calls"] += 1
                d["rss_after_mib"] = _rss_mib()
                d["maxrss_after_mib"] = _maxrss_mib()

        return wrapper

    def mark(self, label: str) -> None:
        """RSS at a point (no timing)."""
        self.data[label] = {"rss_mib": _rss_mib(), "maxrss_mib": _maxrss_mib()}


def run_child(phase: str, params: str, outdir: str, result: str, cprofile: str | None) -> None:
    import resource

    t_start = time.perf_counter()
    os.chdir(outdir)
    steps = _Steps()
    if phase == "prepare":
        import pipeline.prepare as stage

        stage.fill = steps.wrap("parse (layout -> on-disk row table)", stage.fill)
        stage.validate_table = steps.wrap("data checks (validate_table)", stage.validate_table)
        stage.write_protocol = steps.wrap("protocol (streamed)", stage.write_protocol)
        stage.write_report = steps.wrap("check report", stage.write_report)
        stage.write_rows = steps.wrap("manifest CSV (streamed)", stage.write_rows)
    elif phase == "shard":
        import pipeline.shard as stage

        stage.write_shards = steps.wrap("write_shards (total)", stage.write_shards)
    else:
        raise SystemExit(f"unknown phase {phase!r}")
    t_imported = time.perf_counter()
    steps.mark("after imports")
    sys.argv = [f"pipeline.{phase}", "--params", params, "--dataset", DATASET]
    prof = None
    if cprofile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    stage.main()
    t_main = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(cprofile)
    steps.mark("end")
    out = {
        "phase": phase,
        "import_s": t_imported - t_start,
        "main_s": t_main,
        "steps": steps.data,
        "maxrss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "maxrss_workers_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    Path(result).write_text(json.dumps(out, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# parent side


def synth_config(n: int):
    from reid.data.synthetic import MSMT17SynthConfig

    ids = max(2, round(n / 20))
    return MSMT17SynthConfig(num_train_ids=ids // 2, num_test_ids=ids - ids // 2, num_cameras=15, cameras_per_id=4,
                             images_per_id_camera=5, val_every=8, height=128, width=64, jpeg_quality=90, seed=0)


def ensure_dataset(workdir: Path, n: int) -> tuple[Path, bool]:
    """``<workdir>/msmt17_<n>/MSMT17_V1``, generated unless a folder with the same config exists."""
    from reid.data.synthetic import MSMT17_DIR, write_msmt17

    cfg = synth_config(n)
    base = workdir / f"msmt17_{n}"
    want = json.dumps(dataclasses.asdict(cfg), sort_keys=True) + "\n"
    cfg_file = base / "synth_config.json"
    root = base / MSMT17_DIR
    if root.is_dir() and cfg_file.is_file() and cfg_file.read_text() == want:
        return root, True
    cfg_file.unlink(missing_ok=True)
    log(f"N={n}: generating {cfg} (not timed) ...")
    t0 = time.perf_counter()
    write_msmt17(base, cfg, overwrite=True)
    cfg_file.write_text(want)
    log(f"N={n}: generated in {time.perf_counter() - t0:.0f} s")
    return root, False


def warm_cache(root: Path) -> tuple[int, int, int]:
    """``sync``, then read every file under ``root`` once. Returns (jpegs, jpeg bytes, files)."""
    subprocess.run(["sync"], check=True)
    n_jpg = jpg_bytes = n_files = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as fh:
                size = len(fh.read())
            n_files += 1
            if name.lower().endswith(".jpg"):
                n_jpg += 1
                jpg_bytes += size
    return n_jpg, jpg_bytes, n_files


def timed_process(cmd: list[str], rss_file: Path, cwd: Path | None = None) -> dict[str, float]:
    """Run ``cmd``; wall seconds and the peak RSS (MiB) of its process tree.

    The peak RSS comes from GNU ``/usr/bin/time -f %M`` (``ru_maxrss`` of the wait4 on ``cmd``). The command
    is not spawned from this Python process directly because on Linux a child's ``ru_maxrss`` starts at
    the RSS of the process that forked it (here ~55 MiB), which would hide a small tool such as tar.
    Without GNU time: ``os.wait4`` on the direct child (same caveat).
    """
    subprocess.run(["sync"], check=True)
    use_time = os.access("/usr/bin/time", os.X_OK)
    full = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd] if use_time else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    kib = int(rss_file.read_text().split()[-1]) if use_time else usage.ru_maxrss
    return {"wall_s": wall, "maxrss_mib": kib / 1024, "rss_source": "/usr/bin/time %M" if use_time else "os.wait4"}


#: Settings compared in one run: name -> (description, params.yaml overrides "section.key" -> value).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("params.yaml defaults (data checks: full JPEG decode)", {}),
    "header": ("data checks with header-only JPEG check", {"data_checks.decode": False}),
    "nochecks": ("data checks off", {"data_checks.enabled": False}),
}


def write_params(path: Path, root: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    import yaml

    from reid.params import load_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["datasets"][DATASET]["root"] = str(root)
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    p = load_params(path)  # validates; and tells the settings in force
    ds = p.dataset(DATASET)
    return {"check_images": ds.check_images, "data_checks": p.data_checks.model_dump(),
            "min_images (sampler.k)": p.sampler.k, "shard": p.shard.model_dump(),
            "num_draws": ds.num_draws, "val": ds.val}


def bench_size(n: int, workdir: Path, variants: list[str], cprofile: bool, keep: bool) -> dict[str, Any]:
    root, reused = ensure_dataset(workdir, n)
    base = root.parent
    log(f"N={n}: dataset {root} ({'reused' if reused else 'new'}); warming the page cache (sync + read all) ...")
    n_jpg, jpg_bytes, n_files = warm_cache(root)
    log(f"N={n}: {n_jpg} JPEGs, {jpg_bytes / MB:.1f} MB ({n_files} files in all)")
    res: dict[str, Any] = {"n": n, "images": n_jpg, "jpeg_bytes": jpg_bytes, "files": n_files, "root": str(root),
                           "reused_dataset": reused, "variants": {}}
    for variant in variants:
        out = base / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        v: dict[str, Any] = {"settings": write_params(out / "params.yaml", root, VARIANTS[variant][1])}
        warm_cache(root)
        for phase in ("prepare", "shard"):
            result = out / f"{phase}.result.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--params",
                   str(out / "params.yaml"), "--outdir", str(out), "--result", str(result)]
            if cprofile:
                cmd += ["--cprofile-file", str(base / f"{variant}.{phase}.prof")]
            log(f"N={n} [{variant}]: {phase} (fresh process) ...")
            r = timed_process(cmd, out / f"{phase}.maxrss", cwd=REPO)
            r["child"] = json.loads(result.read_text())
            v[phase] = r
            log(f"N={n} [{variant}]: {phase}: {r['wall_s']:.1f} s wall, {n_jpg / r['wall_s']:.0f} img/s, "
                f"peak RSS {r['maxrss_mib']:.0f} MiB")
        res["variants"][variant] = v
        if not keep:
            shutil.rmtree(out / "shards", ignore_errors=True)
    tar = base / "bench.tar"
    tar.unlink(missing_ok=True)
    log(f"N={n}: warming the page cache again (sync + read all), then tar ...")
    warm_cache(root)
    r = timed_process(["tar", "-cf", str(tar), "-C", str(root), "."], base / "tar.maxrss")
    r["tar_bytes"] = tar.stat().st_size
    t0 = time.perf_counter()
    subprocess.run(["sync"], check=True)
    r["sync_after_s"] = time.perf_counter() - t0
    res["tar"] = r
    log(f"N={n}: tar: {r['wall_s']:.1f} s wall (+{r['sync_after_s']:.1f} s sync), {n_jpg / r['wall_s']:.0f} img/s, "
        f"peak RSS {r['maxrss_mib']:.0f} MiB")
    if not keep:
        tar.unlink()
    return res


def render(results: list[dict[str, Any]], command: str) -> str:
    variants = list(results[0]["variants"])
    lines = [
        "Page cache: `sync`, then every dataset file read once, before each variant's pipeline phases and again",
        "before tar. Throughput = N / wall s and input JPEG MB (10^6 B) / wall s; each stage is a fresh process",
        "(start-up and imports included); peak RSS = ru_maxrss of the phase's process tree (largest single",
        "process; GNU time %M), MiB. Variants: "
        + "; ".join(f"`{v}` = {VARIANTS[v][0]}" for v in variants) + ".",
        "",
        f"Command: `{command}`",
        "",
        "| N | variant | input MB | prepare s | shard s | prepare+shard s | prepare+shard img/s | prepare+shard MB/s "
        "| tar s | tar img/s | tar MB/s | ratio vs tar | peak RSS prepare MiB | peak RSS shard MiB | peak RSS tar MiB |",
        "|" + "---|" * 15,
    ]
    for r in results:
        n, mb, t = r["images"], r["jpeg_bytes"] / MB, r["tar"]["wall_s"]
        for name, v in r["variants"].items():
            p, s = v["prepare"]["wall_s"], v["shard"]["wall_s"]
            ps = p + s
            lines.append(
                f"| {n} | {name} | {mb:.1f} | {p:.2f} | {s:.2f} | {ps:.2f} | {n / ps:.0f} | {mb / ps:.2f} "
                f"| {t:.2f} | {n / t:.0f} | {mb / t:.1f} | {t / ps:.3f} | {v['prepare']['maxrss_mib']:.0f} "
                f"| {v['shard']['maxrss_mib']:.0f} | {r['tar']['maxrss_mib']:.1f} |")
    lines += ["", "tar wall time excludes the `sync` after it: "
              + ", ".join(f"N={r['images']}: +{r['tar']['sync_after_s']:.1f} s sync" for r in results) + "."]
    lines += ["", "Goals: throughput >= 0.8 x tar; peak RSS at the largest N within 15 % of the smallest N.", ""]
    for r in results:
        for name, v in r["variants"].items():
            ratio = r["tar"]["wall_s"] / (v["prepare"]["wall_s"] + v["shard"]["wall_s"])
            lines.append(f"- N={r['images']} [{name}]: throughput ratio {ratio:.3f} -> {'MET' if ratio >= 0.8 else 'NOT met'}")
    if len(results) >= 2:
        lo, hi = results[0], results[-1]
        for name in variants:
            for phase in ("prepare", "shard"):
                a, b = lo["variants"][name][phase]["maxrss_mib"], hi["variants"][name][phase]["maxrss_mib"]
                ia = lo["variants"][name][phase]["child"]["maxrss_self_mib"]
                ib = hi["variants"][name][phase]["child"]["maxrss_self_mib"]
                lines.append(f"- [{name}] {phase} peak RSS N={hi['images']} / N={lo['images']}: {b:.0f} / {a:.0f} MiB "
                             f"= {b / a:.2f} -> {'MET' if b / a <= 1.15 else 'NOT met'} (stage process alone, before "
                             f"exit: {ib:.0f} / {ia:.0f} = {ib / ia:.2f})")
    lines += ["", "Breakdown inside the stage processes (s; RSS of the stage process after the step, MiB).", ""]
    lines += ["| N | variant | phase | step | calls | s | RSS after MiB | peak so far MiB |", "|" + "---|" * 8]
    for r in results:
        for name, v in r["variants"].items():
            for phase in ("prepare", "shard"):
                c = v[phase]["child"]
                head = f"| {r['images']} | {name} | {phase}"
                lines.append(f"{head} | process start + imports (outside main) | 1 "
                             f"| {v[phase]['wall_s'] - c['main_s']:.2f} | {c['steps']['after imports']['rss_mib']:.0f} "
                             f"| {c['steps']['after imports']['maxrss_mib']:.0f} |")
                for label, d in c["steps"].items():
                    if "seconds" in d:
                        lines.append(f"{head} | {label} | {d['calls']} | {d['seconds']:.2f} "
                                     f"| {d['rss_after_mib']:.0f} | {d['maxrss_after_mib']:.0f} |")
                timed = sum(d["seconds"] for d in c["steps"].values() if "seconds" in d)
                lines.append(f"{head} | rest of main() | | {c['main_s'] - timed:.2f} "
                             f"| {c['steps']['end']['rss_mib']:.0f} | {c['steps']['end']['maxrss_mib']:.0f} |")
                lines.append(f"{head} | (max RSS: stage process {c['maxrss_self_mib']:.0f}, "
                             f"its child processes {c['maxrss_workers_mib']:.0f}) | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000], help="dataset sizes N (images)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/shardbench"),
                    help="datasets, stage outputs and the tar go here (same disk for all)")
    ap.add_argument("--output", type=Path, default=None, help="Markdown results (default <workdir>/results.md)")
    ap.add_argument("--cprofile", action="store_true", help="run the stages under cProfile (timings not comparable)")
    ap.add_argument("--keep-outputs", action="store_true", help="keep the shards and bench.tar of each size")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                    help="settings to run prepare+shard under (default: all)")
    # internal: one stage in a fresh process
    ap.add_argument("--phase", choices=("prepare", "shard"), help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--outdir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--cprofile-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        run_child(args.phase, args.params, args.outdir, args.result, args.cprofile_file)
        return

    sizes = sorted(set(args.sizes))
    if any(n < 40 for n in sizes):
        ap.error("sizes must be >= 40 images")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python", "benchmarks/shard_throughput.py"] + sys.argv[1:])
    log(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; workdir {workdir}")
    results = [bench_size(n, workdir, args.variants, args.cprofile, args.keep_outputs) for n in sizes]
    for name, v in results[0]["variants"].items():
        log(f"settings in force [{name}]: {v['settings']}")
    text = render(results, command)
    if args.cprofile:
        text = "**Run under cProfile: timings inflated, not comparable.**\n\n" + text
    print(text)
    output = args.output or workdir / "results.md"
    output.write_text(text)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    if args.cprofile:
        import pstats

        for n in sizes:
            for phase in [f"{v}.{p}" for v in args.variants for p in ("prepare", "shard")]:
                prof = workdir / f"msmt17_{n}" / f"{phase}.prof"
                with open(prof.with_suffix(".txt"), "w") as fh:
                    st = pstats.Stats(str(prof), stream=fh)
                    st.sort_stats("tottime").print_stats(25)
                    st.sort_stats("cumulative").print_stats(40)
                log(f"profile: {prof.with_suffix('.txt')}")
    log(f"wrote {output} and {output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
