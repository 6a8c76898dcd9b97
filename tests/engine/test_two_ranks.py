"""``deepspeed --num_gpus 2 --module pipeline.train`` on a CPU-only host: two gloo ranks train together."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import torch

from tests.engine.conftest import clean_env, tiny_params


def test_deepspeed_launcher_two_cpu_ranks(tiny_shards):
    params = tiny_params(tiny_shards, epochs=1)
    deepspeed = Path(sys.executable).with_name("deepspeed")
    proc = subprocess.run(
        [str(deepspeed), "--num_gpus", "2", "--master_port", "29533", "--module", "pipeline.train",
         "--params", str(params), "--dataset", "msmt17"],
        cwd=tiny_shards, env=clean_env(), capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Process" in log and log.count("exits successfully") == 2, log[-2000:]
    run_dir = tiny_shards / "runs" / "msmt17"
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())

    # rank 0 alone logged to MLflow (one value per epoch), and the epoch ran at world size 2
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tiny_shards / 'mlflow.db'}")
    assert [m.value for m in client.get_metric_history(run_id, "world_size")] == [2.0]
    assert len(client.get_metric_history(run_id, "loss")) == 1
    shutil.rmtree(tiny_shards / "runs")
