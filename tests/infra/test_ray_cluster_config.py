"""infra/ray/cluster.yaml against Ray's own cluster-launcher checks.

``ray up`` runs ``prepare_config`` (merge with the provider's defaults.yaml) and then
``validate_config`` (ray-schema.json plus node-type checks) before it touches the cloud; both are
local (no network, no AWS credentials) and are what these tests call, from the installed Ray.
"""

import copy
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "infra" / "ray" / "cluster.yaml"

# (vCPUs, NVIDIA GPUs) of the EC2 instance types the config may name (AWS instance type specs).
GPU_INSTANCES = {"g5.xlarge": (4, 1), "g5.2xlarge": (8, 1), "g5.12xlarge": (48, 4),
                 "g5.48xlarge": (192, 8), "p4d.24xlarge": (96, 8), "p5.48xlarge": (192, 8)}
GPU_FAMILIES = ("g4", "g5", "g6", "p3", "p4", "p5", "p6")


def _raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validated(config: dict) -> dict:
    """What ``ray up`` checks before launching anything: defaults merged, then validated."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _all_commands(config: dict) -> list[str]:
    return [cmd for key in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                            "head_start_ray_commands", "worker_start_ray_commands") for cmd in config.get(key, [])]


def test_cluster_yaml_passes_ray_validation():
    config = _validated(_raw())
    assert config["provider"]["type"] == "aws"
    assert set(config["available_node_types"]) == {"head_cpu", "gpu_a10g", "gpu_h100"}
    assert config["head_node_type"] == "head_cpu"
    assert sum(t.get("min_workers", 0) for t in config["available_node_types"].values()) <= config["max_workers"]


def test_head_has_no_gpu_and_takes_no_trials():
    config = _validated(_raw())
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"]["CPU"] == 0          # nothing schedulable on the head
    assert not head["node_config"]["InstanceType"].startswith(GPU_FAMILIES)
    assert head["max_workers"] == 0                # prepare_config: the head type is never a worker


def test_worker_types_request_the_gpus_of_their_instance_type():
    config = _validated(_raw())
    workers = {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}
    assert workers
    for name, node_type in workers.items():
        instance = node_type["node_config"]["InstanceType"]
        assert instance in GPU_INSTANCES, f"{name}: {instance} not in the known GPU instance types {sorted(GPU_INSTANCES)}"
        cpus, gpus = GPU_INSTANCES[instance]
        assert node_type["resources"] == {"CPU": cpus, "GPU": gpus}, name
        assert node_type["min_workers"] == 0 and node_type["max_workers"] >= 1, name
    assert config["available_node_types"]["gpu_h100"]["node_config"]["InstanceType"] == "p5.48xlarge"


def test_nodes_install_the_project_and_the_locked_ray():
    config = _validated(_raw())
    commands = _all_commands(config)
    assert "cd ~/reid-pipeline && make install" in config["setup_commands"]
    # ray[default] (dashboard + job API) pinned to the Ray of the lock, which the project venv runs.
    assert ray.__version__ == "2.60.0"
    assert any(f'"ray[default]=={ray.__version__}"' in cmd for cmd in config["setup_commands"])
    assert any("boto3" in cmd for cmd in config["head_setup_commands"])
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("~/reid-pipeline/.venv/bin/ray " in cmd for cmd in starts)
    assert any("--head --port=6379" in cmd and "--dashboard-host=127.0.0.1" in cmd
               for cmd in config["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP:6379" in cmd for cmd in config["worker_start_ray_commands"])
    assert all("pip install -U" not in cmd for cmd in commands)  # Ray's default nightly-wheel setup is replaced
    assert config["file_mounts"] == {"~/reid-pipeline": "."}
    assert config["rsync_filter"] == [".gitignore"]


def test_onprem_variant_in_the_comments_validates():
    text = CLUSTER_YAML.read_text()
    block = text.split("# --- on-prem variant begin ---\n")[1].split("# --- on-prem variant end ---")[0]
    onprem = yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))
    assert onprem["provider"]["type"] == "local"
    config = {k: v for k, v in _raw().items()
              if k not in ("provider", "auth", "available_node_types", "head_node_type", "head_setup_commands")}
    config.update(onprem)
    prepared = _validated(config)
    (node_type,) = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(onprem["provider"]["worker_ips"])


def _set(path: tuple, value):
    def mutate(config):
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


@pytest.mark.parametrize("mutate, error, message", [
    (_set(("max_worker",), 3), jsonschema.ValidationError, "'max_worker' was unexpected"),
    (_set(("available_node_types", "gpu_a10g", "resources", "GPU"), "one"), jsonschema.ValidationError,
     "'one' is not of type 'integer'"),
    (_set(("head_node_type",), "head"), ValueError, "must be one of `available_node_types`"),
    (_set(("available_node_types", "gpu_h100", "min_workers"), 6), ValueError, "smaller than the sum of `min_workers`"),
], ids=["unknown-key", "gpu-not-int", "unknown-head-type", "min-workers-over-max"])
def test_validator_rejects_a_broken_copy(mutate, error, message):
    broken = _raw()
    mutate(broken)
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        _validated(broken)
