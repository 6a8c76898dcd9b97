"""Run one training in a fresh process: ``python _train_worker.py PARAMS OUT_DIR MODE``.

MODE is ``full`` (all epochs), ``stop1`` (stop after epoch 1, as if killed), ``resume``, or
``sigterm@E:S`` (the process sends itself SIGTERM after step S of epoch E, both 1-based). Rank 0
writes ``OUT_DIR/steps.json`` (``[[epoch, step, logs], ...]`` of the steps this process ran) and
``OUT_DIR/history.json`` (the per-epoch logs). Works under a distributed launcher too (the
shards are looked up next to PARAMS).
"""

import json
import os
import signal
import sys
from pathlib import Path

from reid.engine.trainer import TrainSpec, train
from reid.params import load_params

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # added by the deepspeed launcher
params_path, out_dir, mode = args[0], Path(args[1]), args[2]
p = load_params(params_path)
ds = p.dataset("msmt17")
spec = TrainSpec(Path(params_path).parent / "shards" / "msmt17", out_dir, ds.image_size, p.sampler, p.loader,
                 p.model, p.loss, p.optim, p.engine)
kill_at = tuple(int(v) for v in mode.split("@")[1].split(":")) if mode.startswith("sigterm@") else None
steps = []


def on_step(epoch: int, step: int, logs: dict) -> None:
    steps.append([epoch, step, logs])
    if (epoch, step) == kill_at:
        os.kill(os.getpid(), signal.SIGTERM)


is_main = int(os.environ.get("RANK", "0")) == 0
try:
    result = train(spec, resume=mode == "resume", stop_after_epochs=1 if mode == "stop1" else None, on_step=on_step)
finally:
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "steps.json").write_text(json.dumps(steps))
if is_main:
    (out_dir / "history.json").write_text(json.dumps(result.history))
