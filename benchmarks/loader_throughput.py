"""Training-loader throughput: DALI (CPU, and GPU where present) vs the PyTorch reference path.

Usage (from the repository root)::

    .venv/bin/python benchmarks/loader_throughput.py --workdir /tmp/loaderbench

1. **Data** (not timed). Two synthetic datasets, written once into ``--workdir`` and reused by a
   later run with the same settings (``synth_config.json`` beside each):

   * ``person``: :func:`reid.data.synthetic.write_msmt17`, 256x128 px crops (H x W),
     ``--person-ids`` train identities x 3 cameras x 4 images (default 200 ids: 2400 train images);
   * ``vehicle``: :func:`reid.data.synthetic.write_vehicle1m`, 224x224 px crops,
     at least ``--vehicle-ids`` train vehicles x 12 images (default 200: 207 vehicles, 2484 train images);

   each parsed with :func:`reid.data.layouts.parse` and sharded with
   :func:`reid.data.shards.write_shards` (1 MB tars) into ``<workdir>/<name>/shards``.
2. **Loaders**, on the ``train`` split of the same shards, the same P x K sampler (seed 0) and
   the same :class:`~reid.data.loaders.config.AugmentConfig`, with two output sizes: the crops'
   own size (256x128, 224x224: no resize needed, both paths skip it) and half of it (128x64, 112x112:
   every image is resized, as crops of varying size are in the real datasets); the default training
   augmentations flip 0.5, pad 10, random erasing p 0.5
   (Zhong et al., AAAI 2020), float32, ``num_threads=--threads`` (DALI CPU threads / DataLoader
   workers, default 2 = this machine's cores), ``prefetch=2``. Paths:

   * ``DALI-CPU``: :class:`reid.data.loaders.dali.DaliTrainLoader` with CPU decoding
     (``cuda_device_id`` forced to None), batches on the CPU;
   * ``PyTorch``: :class:`reid.data.loaders.torch_ref.TorchTrainLoader`, batches on the CPU;
   * ``DALI-GPU`` (only where ``torch.cuda.is_available()``): DALI ``mixed`` decode, batches on
     the GPU.

   Each measurement builds a fresh loader, takes ``--warmup`` batches (pipeline build, worker
   start-up, first reads: not timed), then times ``--batches`` batches of ``next(loader)``
   (``torch.cuda.synchronize`` around the window on GPU). img/s = batches * P * K / seconds. The
   paths are run in turn, ``--repeats`` rounds; the best round is the headline (the machine is
   shared), the median and every round are shown too. "ratio" = best img/s / best PyTorch img/s
   on the same dataset.
3. **Keep-up** (only with CUDA): training step rate of a ResNet-50 BNNeck
   (``reid.models.build("resnet_bnneck", num_classes, depth=50, last_stride=1)``, bf16 autocast,
   Adam, cross-entropy on the BNNeck logits) fed by each loader, built with ``device=cuda`` (``next(loader)``,
   inside the timed step), divided by the step rate on one fixed batch already on the GPU.
   1.0 = the loader keeps up with training; below 1 = training waits for data.

Output: a Markdown section (machine, command, table) printed and written to ``--output``
(default ``<workdir>/results.md``), raw numbers as JSON beside it (``.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from reid.data import layouts  # noqa: E402
from reid.data.loaders import dali  # noqa: E402
from reid.data.loaders.config import AugmentConfig  # noqa: E402
from reid.data.loaders.torch_ref import TorchTrainLoader  # noqa: E402
from reid.data.manifest import contiguous_labels  # noqa: E402
from reid.data.samplers import PKSampler  # noqa: E402
from reid.data.shards import ShardsIndex, write_shards  # noqa: E402
from reid.data.synthetic import (MSMT17SynthConfig, Vehicle1MSynthConfig, write_msmt17,  # noqa: E402
                                 write_vehicle1m)

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SHARD_BYTES = 1_000_000
SAMPLER_SEED = 0


def log(msg: str) -> None:
    print(f"[loaderbench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# data (not timed)


def _dataset(workdir: Path, name: str, synth_cfg: Any, write: Callable, layout: str) -> tuple[Path, float]:
    """Write (or reuse) one synthetic dataset and its shards; return the shards folder and the
    seconds spent writing them (0 when reused)."""
    base = workdir / name
    stamp = base / "synth_config.json"
    want = json.dumps({"config": dataclasses.asdict(synth_cfg), "shard_bytes": SHARD_BYTES}, sort_keys=True)
    shards = base / "shards"
    if stamp.is_file() and stamp.read_text() == want and (shards / "shards.json").is_file():
        log(f"{name}: reusing {base}")
        return shards, 0.0
    base.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    t = time.perf_counter()
    root = write(base, synth_cfg, overwrite=True)
    manifest = layouts.parse(layout, root)
    write_shards(manifest, root, shards, SHARD_BYTES, workers=min(2, os.cpu_count() or 1))
    stamp.write_text(want)
    dt = time.perf_counter() - t
    log(f"{name}: wrote {len(manifest.rows)} images + shards in {dt:.1f} s ({base})")
    return shards, dt


def make_datasets(workdir: Path, person_ids: int, vehicle_ids: int) -> dict[str, dict]:
    person = MSMT17SynthConfig(num_train_ids=person_ids, num_test_ids=1, num_cameras=4, cameras_per_id=3,
                               images_per_id_camera=4, val_every=0, height=256, width=128)
    vehicles_per_model = 10
    vehicle = Vehicle1MSynthConfig(num_models=-(-(vehicle_ids + 3) // vehicles_per_model),
                                   vehicles_per_model=vehicles_per_model, num_test_vehicles=3,
                                   images_per_vehicle=12, size=224)
    out = {}
    for name, cfg, write, layout, size in (("person", person, write_msmt17, "msmt17", (256, 128)),
                                           ("vehicle", vehicle, write_vehicle1m, "vehicle1m", (224, 224))):
        shards, gen_s = _dataset(workdir, name, cfg, write, layout)
        index = ShardsIndex.load(shards)
        keys = index.keys("train")
        raw = [index.labels(k)["pid"] for k in keys]
        pid_map = contiguous_labels(raw)
        out[name] = {"index": index, "keys": keys, "pid_map": pid_map, "labels": [pid_map[p] for p in raw],
                     "size": size, "gen_s": gen_s}
    return out


# ---------------------------------------------------------------------------------------------
# measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_loader(path: str, ds: dict, cfg: AugmentConfig, p: int, k: int,
                device: torch.device = torch.device("cpu")):
    """A fresh training loader of ``path`` and the device its batches land on (``device`` for the
    CPU-decoding paths; DALI-GPU always lands on the current CUDA device)."""
    sampler = PKSampler(ds["labels"], p, k, seed=SAMPLER_SEED)
    args = (ds["index"], ds["keys"], ds["pid_map"], sampler, cfg)
    if path == "PyTorch":
        return TorchTrainLoader(*args, seed=1, device=device), device
    if path in ("DALI-CPU", "DALI-CPU+src1"):
        saved = dali.cuda_device_id
        dali.cuda_device_id = lambda: None  # CPU decode even on a GPU machine
        try:  # "+src1": shard reads in one parallel external-source worker process
            return dali.DaliTrainLoader(*args, seed=1, device=device,
                                        source_workers=1 if path.endswith("src1") else 0), device
        finally:
            dali.cuda_device_id = saved
    if path == "DALI-GPU":
        device = torch.device("cuda", torch.cuda.current_device())
        return dali.DaliTrainLoader(*args, seed=1, device=device), device
    raise ValueError(path)


def images_per_s(path: str, ds: dict, cfg: AugmentConfig, p: int, k: int, warmup: int, batches: int) -> float:
    loader, device = make_loader(path, ds, cfg, p, k)
    try:
        for _ in range(warmup):
            next(loader)
        _sync(device)
        t = time.perf_counter()
        for _ in range(batches):
            batch = next(loader)
            assert batch["images"].shape[0] == p * k
        _sync(device)
        dt = time.perf_counter() - t
    finally:
        loader.close()
    return batches * p * k / dt


def keep_up(paths: list[str], ds: dict, cfg: AugmentConfig, p: int, k: int, warmup: int, steps: int,
            device: torch.device, depth: int = 50) -> dict[str, dict[str, float]]:
    """Train steps/s with each loader and with a fixed on-device batch; ratio = loader / fixed."""
    from reid.models import build

    model = build("resnet_bnneck", len(ds["pid_map"]), depth=depth, last_stride=1).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    ce = torch.nn.CrossEntropyLoss()
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(images: torch.Tensor, pids: torch.Tensor) -> None:
        with amp:
            loss = ce(model(images)["logits"].float(), pids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def rate(next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> float:
        for _ in range(warmup):
            step(*next_batch())
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            step(*next_batch())
        _sync(device)
        return steps / (time.perf_counter() - t)

    h, w = cfg.image_size
    g = torch.Generator().manual_seed(0)
    fixed = (torch.randn(p * k, 3, h, w, generator=g).to(device),
             torch.tensor([i for i in range(p) for _ in range(k)], dtype=torch.int64).to(device))
    out = {"fixed": {"steps_per_s": rate(lambda: fixed)}}
    for path in paths:
        loader, _ = make_loader(path, ds, cfg, p, k, device)  # the loader lands batches on the GPU
        try:
            def from_loader() -> tuple[torch.Tensor, torch.Tensor]:
                b = next(loader)
                return (b["images"].to(device, non_blocking=True), b["pids"].to(device, non_blocking=True))
            r = rate(from_loader)
        finally:
            loader.close()
        out[path] = {"steps_per_s": r, "ratio": r / out["fixed"]["steps_per_s"]}
    return out


# ---------------------------------------------------------------------------------------------
# report


def machine() -> str:
    import nvidia.dali as ndali

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores ({cpu}){mem}, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, DALI {ndali.__version__}")


def markdown(res: dict) -> str:
    a = res["args"]
    lines = [
        "## Training-loader throughput: DALI vs the PyTorch reference path",
        "",
        f"- Machine: {res['machine']}. Load average before the run {res['load_before']}, after {res['load_after']}.",
        f"- Command: `{res['command']}` ({res['wall_s']:.0f} s in all, of which {res['gen_s']:.0f} s writing the "
        f"data{'' if res['gen_s'] else ': reused from an earlier run'}). Train images: "
        + ", ".join(f"{n} {c}" for n, c in res["train_images"].items()) + ".",
        f"- Loaders: train split, P×K sampler seed {SAMPLER_SEED}, flip 0.5, pad 10, erase p 0.5, float32, "
        f"num_threads {a['threads']}, prefetch 2; {a['warmup']} warm-up + {a['batches']} timed batches per "
        f"measurement, best of {a['repeats']} rounds.",
        "",
        "| dataset | crop (H×W) | output (H×W) | path | P×K | img/s (best) | ratio vs PyTorch | median img/s | "
        "all rounds img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row, d in res["throughput"].items():
        name = row.split("@")[0]
        base = max(d["PyTorch"])
        for path, rounds in d.items():
            best = max(rounds)
            lines.append(f"| {name} | {res['sizes'][name]} | {res['outputs'][row]} | {path} | {a['p']}×{a['k']} | "
                         f"{best:.0f} | {best / base:.2f} | {statistics.median(rounds):.0f} | "
                         f"{', '.join(f'{r:.0f}' for r in rounds)} |")
    if res.get("keep_up"):
        lines += ["", "Keep-up (ResNet-50 BNNeck, bf16 autocast, Adam): train steps/s fed by the loader ÷ "
                      "steps/s on a fixed batch already on the GPU.", "",
                  "| dataset | loader | P×K | steps/s | fixed-batch steps/s | ratio |", "|---|---|---|---|---|---|"]
        for name, d in res["keep_up"].items():
            fixed = d["fixed"]["steps_per_s"]
            for path, v in d.items():
                if path != "fixed":
                    lines.append(f"| {name} | {path} | {a['p']}×{a['k']} | {v['steps_per_s']:.2f} | "
                                 f"{fixed:.2f} | {v['ratio']:.2f} |")
    else:
        lines += ["", "No CUDA device: DALI-GPU and the keep-up ratio were not measured."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/loaderbench"))
    ap.add_argument("--output", type=Path, default=None, help="Markdown file (default <workdir>/results.md)")
    ap.add_argument("--person-ids", type=int, default=200)
    ap.add_argument("--vehicle-ids", type=int, default=200)
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keepup-steps", type=int, default=30)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    output = args.output or args.workdir / "results.md"
    cuda = torch.cuda.is_available()

    data = make_datasets(args.workdir, args.person_ids, args.vehicle_ids)
    paths = ["DALI-CPU", "DALI-CPU+src1", "PyTorch"] + (["DALI-GPU"] if cuda else [])
    throughput: dict[str, dict[str, list[float]]] = {}
    outputs: dict[str, str] = {}
    for name, ds in data.items():
        h, w = ds["size"]
        for size in ((h, w), (h // 2, w // 2)):  # output = the crops' own size, then half of it (a resize)
            cfg = AugmentConfig(image_size=size, mean=MEAN, std=STD, flip_prob=0.5, pad=10, erase_prob=0.5,
                                num_threads=args.threads, prefetch=2)
            row = f"{name}@{size[0]}x{size[1]}"
            outputs[row] = f"{size[0]}×{size[1]}"
            throughput[row] = {p: [] for p in paths}
            for rnd in range(args.repeats):
                for path in paths:
                    r = images_per_s(path, ds, cfg, args.p, args.k, args.warmup, args.batches)
                    throughput[row][path].append(r)
                    log(f"{row} {path} round {rnd + 1}: {r:.0f} img/s")
    keep: dict[str, Any] = {}
    if cuda:
        device = torch.device("cuda", torch.cuda.current_device())
        for name, ds in data.items():
            cfg = AugmentConfig(image_size=ds["size"], mean=MEAN, std=STD, flip_prob=0.5, pad=10, erase_prob=0.5,
                                num_threads=args.threads, prefetch=2)
            keep[name] = keep_up(paths, ds, cfg, args.p, args.k, args.warmup, args.keepup_steps, device)
            log(f"{name} keep-up: {keep[name]}")

    res = {
        "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/loader_throughput.py",
                                                     *(sys.argv[1:] if argv is None else argv)]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sizes": {n: f"{d['size'][0]}×{d['size'][1]}" for n, d in data.items()},
        "outputs": outputs,
        "train_images": {n: len(d["keys"]) for n, d in data.items()},
        "gen_s": sum(d["gen_s"] for d in data.values()),
        "throughput": throughput,
        "keep_up": keep,
        "load_before": load_before,
        "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "wall_s": time.perf_counter() - t0,
    }
    md = markdown(res)
    print(md)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(md)
    output.with_suffix(".json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    log(f"wrote {output} and {output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
