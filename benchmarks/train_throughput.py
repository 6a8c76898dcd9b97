"""Training throughput of DeepSpeed ZeRO stage 0, 1 and 2 against plain PyTorch DDP.

Usage (from the repository root)::

    .venv/bin/python benchmarks/train_throughput.py [--p 4 --k 4 --warmup 1 --rounds 3 --steps 2] [--out FILE]
    .venv/bin/python benchmarks/train_throughput.py --smoke      # tiny: ResNet-18, 64x32, 1 warm-up + 1 timed step

What is measured: full training steps (forward, loss, backward, optimizer step, gradient
all-reduce) of ``reid.models.build("resnet_bnneck", 751, depth=50)`` (ResNet-50 BNNeck, last
stride 1) at 256x128 (H x W) px, in ``--ranks`` processes (default 2 on CPU, one per GPU on CUDA)
that this script spawns itself. Four variants of the same training run live side by side in every
process:

* ``DDP``: ``torch.nn.parallel.DistributedDataParallel`` (default settings, so BatchNorm buffers are
  broadcast from rank 0 at every forward) + ``torch.optim.Adam``;
* ``ZeRO-0``, ``ZeRO-1``, ``ZeRO-2``: ``deepspeed.initialize`` with the same kind of Adam passed as a
  client optimizer and the config ``infra/deepspeed/zero<stage>.json`` filled by
  :func:`reid.engine.deepspeed_config.fill_template`, as :func:`reid.engine.trainer.train` does.

All four share the model init (``torch.manual_seed(--seed)`` before each build), the optimizer
settings of ``params.yaml`` (``model.param_groups(optim.lr)``, ``optim.weight_decay``,
``optim.grad_clip``), the losses ``ce`` + ``triplet`` through :class:`reid.engine.criterion.Criterion`
with the ``loss`` settings of ``params.yaml`` (label smoothing 0.1, margin 0.3; computed exactly as
the trainer computes them, cross-rank gathering of Criterion's cross-sample losses included), and one fixed
synthetic batch per rank: P x K standard-normal images, pids ``rank * P + i`` for i < P, each K
times (so batch-hard triplet mining has positives and negatives). On CPU: gloo, fp32,
``torch.set_num_threads(max(1, os.cpu_count() // ranks))`` per rank. On CUDA: NCCL, bf16 autocast,
channels_last images (weights contiguous, as in the trainer).

Every variant first takes ``--warmup`` untimed steps; then ``--rounds`` rounds run the variants in
turn (DDP, ZeRO-0, ZeRO-1, ZeRO-2, DDP, ...), ``--steps`` timed steps each, so drift of the machine's
load hits all variants alike. A round's time runs from a barrier before its first step to a barrier
after its last (``cuda.synchronize`` too); img/s = ranks x P x K x steps / seconds (global). The
table gives the median over rounds, the ratio to DDP's median, and every round. Sanity check: the
loss (mean over ranks) of every step; all variants start from the same weights and data, so step 1
must agree to float rounding, later steps closely (reduction order differs).

Prints a Markdown section ready for ``benchmarks/RESULTS.md``; ``--out FILE`` also writes it (atomically).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from reid.engine.criterion import Criterion  # noqa: E402
from reid.engine.deepspeed_config import fill_template, load_template  # noqa: E402
from reid.engine.distributed import free_port, init_distributed  # noqa: E402
from reid.io import atomic_write_json, atomic_write_text  # noqa: E402
from reid.models import build  # noqa: E402
from reid.params import load_params  # noqa: E402

NUM_CLASSES = 751  # Market-1501's training identities; only the classifier's width depends on it
VARIANTS = ("DDP", "ZeRO-0", "ZeRO-1", "ZeRO-2")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fixed_batch(rank: int, p: int, k: int, size: tuple[int, int], seed: int, device: torch.device) -> dict:
    """One rank's synthetic P x K batch: ``images`` (P*K, 3, H, W) float32 N(0, 1) drawn from seed
    ``seed + rank``, ``pids`` (P*K,) int64 = ``rank * p + [0]*k + [1]*k + ...``."""
    g = torch.Generator().manual_seed(seed + rank)
    images = torch.randn(p * k, 3, *size, generator=g)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    pids = rank * p + torch.arange(p).repeat_interleave(k)
    return {"images": images.to(device), "pids": pids.to(device)}


def make_step(variant: str, args: argparse.Namespace, device: torch.device, batch: dict):
    """Build one variant's model, optimizer and engine; return ``step() -> loss`` (float, this rank)."""
    import deepspeed

    params = load_params(REPO / "params.yaml")
    torch.manual_seed(args.seed)
    # channels_last as the trainer does it: NHWC images, contiguous weights (DeepSpeed's parameter
    # broadcast and flattening need contiguous parameters)
    model = build("resnet_bnneck", NUM_CLASSES, depth=args.depth).to(device).train()
    criterion = Criterion(model.losses, params.loss.model_dump(), {"num_classes": NUM_CLASSES})
    for _, _, fn in criterion.terms:
        fn.to(device)
    # as reid.engine.trainer._optimizer for optim.name adam
    opt = torch.optim.Adam(model.param_groups(params.optim.lr), lr=params.optim.lr,
                           weight_decay=params.optim.weight_decay)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    if variant == "DDP":
        device_ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        clip = params.optim.grad_clip

        def backward_step(loss: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
    else:
        stage = int(variant[-1])
        template = load_template(REPO / "infra" / "deepspeed" / f"zero{stage}.json")
        config = fill_template(template, args.p * args.k, params.optim.grad_clip, stage,
                               source=f"infra/deepspeed/zero{stage}.json")
        net, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        if net.zero_optimization_stage() != stage:
            raise RuntimeError(f"{variant}: DeepSpeed runs ZeRO stage {net.zero_optimization_stage()}, not {stage}")

        def backward_step(loss: torch.Tensor) -> None:
            net.backward(loss)
            net.step()

    def step() -> float:
        with amp:
            loss, logs = criterion(net(batch["images"]), batch)
        backward_step(loss)
        return logs["loss"]

    return step


def worker(rank: int, world_size: int, port: int, args: argparse.Namespace, result_path: str) -> None:
    """One rank: build the four variants, warm up, time the interleaved rounds; rank 0 writes
    ``{"rates": {variant: [img/s per round]}, "losses": {variant: [mean loss per step]}}`` as JSON."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    info = init_distributed()
    device = info.device
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    batch = fixed_batch(rank, args.p, args.k, tuple(args.size), args.seed, device)
    steps = {v: make_step(v, args, device, batch) for v in VARIANTS}
    losses: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for v in VARIANTS:
        for _ in range(args.warmup):
            losses[v].append(steps[v]())
    images = world_size * args.p * args.k * args.steps
    for rnd in range(args.rounds):
        for v in VARIANTS:
            dist.barrier()
            _sync(device)
            t = time.perf_counter()
            for _ in range(args.steps):
                losses[v].append(steps[v]())
            _sync(device)
            dist.barrier()
            rates[v].append(images / (time.perf_counter() - t))
            if rank == 0:
                print(f"[trainbench {time.strftime('%H:%M:%S')}] round {rnd + 1}/{args.rounds} {v}: "
                      f"{rates[v][-1]:.2f} img/s", file=sys.stderr, flush=True)
    mean_loss = torch.tensor([losses[v] for v in VARIANTS], dtype=torch.float64, device=device)
    dist.all_reduce(mean_loss)
    mean_loss /= world_size
    if rank == 0:
        atomic_write_json(result_path, {"rates": rates,
                                        "losses": dict(zip(VARIANTS, mean_loss.cpu().tolist()))})
    dist.barrier()
    dist.destroy_process_group()


def machine() -> str:
    """One line: CPU model and count, RAM, GPU, Python/torch/DeepSpeed versions."""
    import deepspeed

    cpu = platform.processor() or platform.machine()
    mem = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    gpu = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
           else "no GPU")
    return (f"{os.cpu_count()} CPU cores ({cpu}){mem}, {gpu}; {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, DeepSpeed {deepspeed.__version__}")


def markdown(res: dict, args: argparse.Namespace) -> str:
    """The Markdown section for RESULTS.md from the rank-0 results and the run settings."""
    cuda = res["cuda"]
    n = args.ranks
    precision = "NCCL, bf16 autocast, channels_last" if cuda else \
        f"gloo, fp32, {max(1, (os.cpu_count() or 1) // n)} torch thread(s) per rank"
    params = load_params(REPO / "params.yaml")
    optim, loss = params.optim, params.loss
    med = {v: statistics.median(r) for v, r in res["rates"].items()}
    losses = res["losses"]
    first = [losses[v][0] for v in VARIANTS]
    per_step = [max(col) - min(col) for col in zip(*(losses[v] for v in VARIANTS))]
    lines = [
        f"## Training throughput: DeepSpeed ZeRO 0/1/2 vs DDP ({'CUDA' if cuda else 'CPU'}, {n} ranks)",
        "",
        f"- Machine: {res['machine']}. Load average before the run {res['load_before']}, after {res['load_after']}.",
        f"- Command: `{res['command']}` ({res['wall_s']:.0f} s in all).",
        f"- ResNet-{args.depth} BNNeck (last stride 1, {NUM_CLASSES} classes), {args.size[0]}×{args.size[1]}, "
        f"ce (ε {loss.ce.epsilon}) + batch-hard triplet (margin {loss.triplet.margin}), Adam (lr {optim.lr}, "
        f"weight decay {optim.weight_decay}, grad clip {optim.grad_clip}); {n} ranks × P {args.p} × K {args.k} = "
        f"{n * args.p * args.k} images per step; {precision}. One fixed random batch per rank. {args.warmup} "
        f"warm-up step(s) per variant, then {args.rounds} interleaved rounds × {args.steps} timed steps.",
        "",
        "| variant | img/s (median, all ranks) | " + ("img/s per GPU | " if cuda else "")
        + "ratio vs DDP | all rounds img/s | loss step 1 | loss last step |",
        "|---|---|" + ("---|" if cuda else "") + "---|---|---|---|",
    ]
    for v in VARIANTS:
        lines.append(f"| {v} | {med[v]:.2f} | " + (f"{med[v] / n:.2f} | " if cuda else "")
                     + f"{med[v] / med['DDP']:.3f} | {', '.join(f'{r:.2f}' for r in res['rates'][v])} | "
                     f"{losses[v][0]:.6f} | {losses[v][-1]:.6f} |")
    lines += ["", f"Loss agreement (mean over ranks, same step, across the four variants): max |difference| "
                  f"{max(first) - min(first):.2e} at step 1, {max(per_step):.2e} over all {len(per_step)} steps."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--p", type=int, default=4, help="identities per rank per step (default 4)")
    ap.add_argument("--k", type=int, default=4, help="images per identity (default 4)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant before the rounds")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    ap.add_argument("--ranks", type=int, default=None, help="processes (default: 2 on CPU, one per GPU on CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before the ranks are killed")
    ap.add_argument("--smoke", action="store_true", help="tiny run: ResNet-18, 64x32, 1 warm-up, 1 round x 1 step")
    ap.add_argument("--out", type=Path, default=None, help="also write the Markdown section here")
    args = ap.parse_args(argv)
    args.depth, args.size = (18, (64, 32)) if args.smoke else (50, (256, 128))
    if args.smoke:
        args.warmup, args.rounds, args.steps = 1, 1, 1
    for name in ("p", "k", "rounds", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.k < 2:
        ap.error(f"--k must be >= 2 (the triplet loss needs positives), got {args.k}")
    cuda = torch.cuda.is_available()
    if args.ranks is None:
        args.ranks = torch.cuda.device_count() if cuda else 2
    if args.ranks < 1 or (cuda and args.ranks > torch.cuda.device_count()):
        limit = f" and at most the {torch.cuda.device_count()} GPUs (one rank per GPU)" if cuda else ""
        ap.error(f"--ranks must be >= 1{limit}, got {args.ranks}")

    t0 = time.perf_counter()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="trainbench") as tmp:
        result_path = os.path.join(tmp, "result.json")
        ctx = mp.start_processes(worker, args=(args.ranks, free_port(), args, result_path), nprocs=args.ranks,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + args.timeout
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                raise TimeoutError(f"ranks still running after --timeout {args.timeout:.0f} s; killed them")
        res = json.loads(Path(result_path).read_text())
    res.update(machine=machine(), cuda=cuda, load_before=load_before, wall_s=time.perf_counter() - t0,
               load_after=" ".join(f"{x:.2f}" for x in os.getloadavg()),
               command=" ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/train_throughput.py",
                                                         *(sys.argv[1:] if argv is None else argv)]))
    text = markdown(res, args)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
