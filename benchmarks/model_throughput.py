"""Parameters, GFLOPs and train-step throughput of every registered model.

Usage (from the repository root)::

    .venv/bin/python benchmarks/model_throughput.py [--models tamr pan ...] [--steps 3] [--output FILE]

For each model (default: all of ``reid.models.available()``), built with its default (paper)
keyword arguments for ``NUM_CLASSES`` identities:

* **params**: trainable parameters of the whole model, classifier included, in millions.
* **GFLOPs**: one forward pass of one image at the model's paper input size, in eval mode, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2 FLOPs; papers usually
  count it as 1, so the ``GMACs`` column = GFLOPs / 2 is the number to compare with them).
* **train img/s**: full training steps (forward, the model's declared losses with the weights of
  ``params.yaml``, backward, Adam step) on a ``BATCH``-image batch at the paper input size, after
  one warm-up step; on CPU in fp32 with torch's default threads, and on GPU in bf16 autocast when
  CUDA is available.

Prints a Markdown table and writes it to ``--output`` if given.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reid.engine.criterion import Criterion  # noqa: E402
from reid.models import available, build  # noqa: E402

NUM_CLASSES = 751
#: 4 vehicle models x 3 vehicles x 2 images (TAMR's batch structure); 12 ids x 2 images for the rest.
BATCH = 24
#: (height, width) each paper trains at (APNet's Table III FLOPs are at 224×224: see reid/models/README.md).
INPUT_SIZE = {
    "resnet_bnneck": (256, 128),
    "tamr": (224, 224),
    "pan": (384, 128),
    "sag": (160, 64),
    "can": (748, 246),
    "apnet_c": (256, 128),
    "apnet_s": (256, 128),
}
DEFAULT_SIZE = (256, 128)


def _batch(n: int, size: tuple[int, int], device: torch.device) -> dict:
    pids = torch.arange(n, device=device) // 2
    return {"images": torch.randn(n, 3, *size, device=device), "pids": pids, "model_ids": pids // 3,
            "camids": torch.arange(n, device=device) % 2}


def count(name: str, size: tuple[int, int]) -> tuple[float, float]:
    """(parameters in millions, forward GFLOPs of one image in eval mode)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(name, NUM_CLASSES).eval()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, *size))
    return params, counter.get_total_flops() / 1e9


def train_rate(name: str, size: tuple[int, int], device: torch.device, steps: int, batch_size: int = BATCH) -> float:
    """Training images per second over ``steps`` steps after one warm-up step."""
    torch.manual_seed(0)
    model = build(name, NUM_CLASSES).to(device).train()
    settings = yaml.safe_load((REPO / "params.yaml").read_text())["loss"]
    criterion = Criterion(model.losses, settings, {"num_classes": NUM_CLASSES})
    for _, _, fn in criterion.terms:
        fn.to(device)
    opt = torch.optim.Adam(model.param_groups(3.5e-4))
    batch = _batch(batch_size, size, device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with amp:
            loss, _ = criterion(model(batch["images"]), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, help="registered names (default: all)")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per model and device")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"images per training step (default {BATCH})")
    ap.add_argument("--output", type=Path, default=None, help="also write the Markdown table here")
    args = ap.parse_args(argv)
    names = args.models or available()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        f"- Machine: {os.cpu_count()} CPU threads ({platform.processor() or platform.machine()}), GPU: {gpu}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch CPU threads.",
        f"- Command: `.venv/bin/python benchmarks/model_throughput.py {' '.join(sys.argv[1:])}`".rstrip() + "; "
        f"{NUM_CLASSES} classes, batch {args.batch}, {args.steps} timed steps after 1 warm-up.",
        "",
        "| model | input (H×W) | params (M) | GFLOPs (fwd, 1 image) | GMACs | "
        + " | ".join(f"train img/s {d.type}{' bf16' if d.type == 'cuda' else ' fp32'}" for d in devices) + " |",
        "|" + "---|" * (5 + len(devices)),
    ]
    for name in names:
        size = INPUT_SIZE.get(name, DEFAULT_SIZE)
        params, gflops = count(name, size)
        rates = [train_rate(name, size, d, args.steps, args.batch) for d in devices]
        lines.append(f"| {name} | {size[0]}×{size[1]} | {params:.2f} | {gflops:.2f} | {gflops / 2:.2f} | "
                     + " | ".join(f"{r:.1f}" for r in rates) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
