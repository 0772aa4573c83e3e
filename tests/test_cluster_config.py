"""cluster.yaml against Ray's own cluster-launcher schema."""

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

CONFIG = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _load():
    return yaml.safe_load(CONFIG.read_text())


def validate_config(config: dict) -> None:
    """What `ray up` checks of a config: the schema Ray ships beside its launcher (read as a
    file, not through the launcher's private modules) and the node types' consistency."""
    schema = json.loads((resources.files("ray.autoscaler") / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    if config.get("head_node_type") not in types:
        raise ValueError("`head_node_type` must be one of `available_node_types`")
    if sum(t.get("min_workers", 0) for t in types.values()) > config["max_workers"]:
        raise ValueError("the global `max_workers` is below the sum of the node types' `min_workers`")


def test_cluster_yaml_passes_rays_schema():
    config = _load()
    validate_config(config)
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])  # not exposed
    assert "2.60" in config["docker"]["image"]


def test_schema_check_rejects_a_broken_config():
    config = _load()
    config["available_node_types"]["gpu_worker"]["max_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)
