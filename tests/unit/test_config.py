from __future__ import annotations

from pathlib import Path

import pytest

from pac.errors import ConfigError
from pacd.config import DaemonConfig, load_config, parse_size


def test_file_then_flags(tmp_path):
    path = tmp_path / "pacd.toml"
    path.write_text('port = 9000\nmemory_budget = "2GiB"\nstate_dir = "/srv/pacd"\nmdns_interfaces = ["10.0.0.2"]\n')
    config = load_config(path, {"port": 0, "host": None})
    assert (config.port, config.memory_budget, config.state_dir, config.mdns_interfaces) == \
        (0, 2 * 2**30, Path("/srv/pacd"), ("10.0.0.2",))
    assert config.host == "0.0.0.0"


def test_pacd_table_and_missing_default(tmp_path, monkeypatch):
    path = tmp_path / "pacd.toml"
    path.write_text("[pacd]\nport = 1234\n")
    assert load_config(path).port == 1234
    monkeypatch.setattr("pacd.config.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_config(None) == DaemonConfig()


@pytest.mark.parametrize("text, message", [
    ("port = 70000", "port must be 0..65535"),
    ('port = "x"', "port has the wrong type"),
    ("colour = 1", "unknown configuration key 'colour'"),
    ('memory_budgte = "1GiB"', "unknown configuration key 'memory_budgte'; did you mean 'memory_budget'?"),
    ('memory_budget = "lots"', "memory_budget: cannot read"),
    ("port = ", "pacd.toml"),
    ('insecure = true\nhost = "0.0.0.0"', "loopback only"),
])
def test_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "pacd.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(path)


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_sizes():
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size(42) == 42
    assert DaemonConfig(insecure=True, host="127.0.0.1").insecure
    assert DaemonConfig(memory_budget_bytes=0).memory_budget > 0
