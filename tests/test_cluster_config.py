"""cluster.yaml against Ray's own cluster-launcher schema."""

from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _load():
    return yaml.safe_load(CONFIG.read_text())


def test_cluster_yaml_passes_rays_schema():
    config = _load()
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])  # not exposed
    assert "2.60" in config["docker"]["image"]


def test_schema_check_rejects_a_broken_config():
    config = _load()
    config["available_node_types"]["gpu_worker"]["max_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))
