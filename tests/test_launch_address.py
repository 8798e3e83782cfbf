"""`--address` / $RAY_ADDRESS: an unreachable or malformed Ray address fails fast with one line
naming where it came from, instead of Ray retrying its GCS for minutes."""

from __future__ import annotations

import socket
import time

import pytest

from gvae_dist.cli import main
from gvae_dist.config import ConfigError
from gvae_dist.launch import ClusterUnreachable, check_address, free_port

TINY = [
    "--set",
    "data.num_train=256",
    "--set",
    "data.num_eval=128",
    "--set",
    "data.image_size=32",
    "--set",
    "optim.steps=2",
    "--set",
    "distributed.workers=1",
    "--set",
    "tracking.enabled=false",
]


def test_cli_train_with_a_dead_address_fails_fast_and_names_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = free_port()  # nothing listens there
    start = time.monotonic()
    rc = main(["train", *TINY, "--set", f"run.output_dir={tmp_path}", "--set", f"distributed.address=127.0.0.1:{port}"])
    assert rc == 2 and time.monotonic() - start < 60
    err = capsys.readouterr().err
    assert f"distributed.address=127.0.0.1:{port}: no Ray cluster accepts connections there" in err, err
    assert "ops/ray_head.sh start" in err and "Traceback" not in err
    assert not any(tmp_path.rglob("*.pt"))  # nothing trained, nothing half-written


def test_ray_address_from_the_environment_is_named_as_such(tmp_path, capsys, monkeypatch):
    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    assert main(["train", *TINY, "--set", f"run.output_dir={tmp_path}"]) == 2
    assert f"$RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster" in capsys.readouterr().err


@pytest.mark.parametrize(
    "address, message",
    [
        ("http://127.0.0.1:8265", "dashboard / job-submission URL"),
        ("localhost", "is not host:port"),
        ("127.0.0.1:port", "is not host:port"),
        ("grpc://127.0.0.1:6379", "unknown scheme"),
    ],
)
def test_malformed_addresses_are_config_errors(address, message):
    with pytest.raises(ConfigError, match=message):
        check_address(address, "distributed.address")


def test_a_listening_address_passes_and_auto_is_left_to_ray():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        check_address(f"127.0.0.1:{port}", "distributed.address")
        check_address(f"ray://127.0.0.1:{port}", "distributed.address")
    with pytest.raises(ClusterUnreachable, match="connection refused|Connection refused"):
        check_address(f"127.0.0.1:{port}", "distributed.address", timeout=2)
    check_address("auto", "distributed.address")  # Ray's own lookup of a local cluster


def test_only_an_unreachable_cluster_is_a_one_line_error(monkeypatch, capsys):
    """main() turns ClusterUnreachable into exit code 2 and one line; any other ConnectionError
    (e.g. a tracking server resetting the connection mid-run) keeps its traceback."""
    import gvae_dist.cli as cli

    def unreachable(args):
        raise ClusterUnreachable("distributed.address=10.0.0.1:6379: no Ray cluster accepts connections there")

    def reset(args):
        raise ConnectionResetError("the MLflow server reset the connection")

    monkeypatch.setitem(cli.COMMANDS, "config", unreachable)
    assert main(["config"]) == 2
    assert capsys.readouterr().err == (
        "gvae-dist: error: distributed.address=10.0.0.1:6379: no Ray cluster accepts connections there\n"
    )
    monkeypatch.setitem(cli.COMMANDS, "config", reset)
    with pytest.raises(ConnectionResetError, match="MLflow server reset"):
        main(["config"])
