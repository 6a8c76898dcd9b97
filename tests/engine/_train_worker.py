"""Run one training in a fresh process: ``python _train_worker.py PARAMS OUT_DIR MODE``.

MODE is ``full`` (all epochs), ``stop1`` (stop after epoch 1, as if killed) or ``resume``.
"""

import sys
from pathlib import Path

from reid.engine.trainer import TrainSpec, train
from reid.params import load_params

params_path, out_dir, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
p = load_params(params_path)
ds = p.dataset("msmt17")
spec = TrainSpec(Path(params_path).parent / "shards" / "msmt17", out_dir, ds.image_size, p.sampler, p.loader,
                 p.model, p.loss, p.optim, p.engine)
train(spec, resume=mode == "resume", stop_after_epochs=1 if mode == "stop1" else None)
