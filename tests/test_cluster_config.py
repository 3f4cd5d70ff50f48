"""cluster.yaml passes the checks `ray up` applies, offline."""
import copy
import pathlib

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_ray_up():
    config = _load()
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["head_node_type"] in config["available_node_types"]
    # The project is installed on every node.
    assert any("pip install" in c and "-e ." in c for c in config["setup_commands"])


def test_every_node_starts_with_token_authentication_and_private_ports():
    config = _load()
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"   # the same token on every node
    assert "0.0.0.0" not in (ROOT / "cluster.yaml").read_text()


def test_validator_catches_a_broken_file():
    config = _load()
    config["available_node_types"]["gpu_worker"]["min_wrokers"] = 0  # a typo
    with pytest.raises(jsonschema.ValidationError, match="min_wrokers"):
        validate_config(prepare_config(config))
