"""A tracking server SIGKILLed mid-run (docs/reliability.md).

One real ``mlflow server`` of this module's own (the session's is shared) is killed while a run
trains against it. The run finishes, records what its MLflow run is owed in
``tracking_pending.json`` and says so in one line; after a restart on the same store and port,
re-running ``gvae-dist train`` sends the owed steps and status first: the run ends FINISHED with
every step once. ``gvae-dist tracking sync`` settles a debt without training and never sends a
step twice. A run resumed while its server is down keeps its run id and owes it the rest; a status
the Ray driver cannot set is owed too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import pytest

from gvae_dist.cli import main
from gvae_dist.config import load_config
from gvae_dist.tracking import close_run
from gvae_dist.tracking_pending import PENDING_FILE, mlflow_metric_name, owe, read_pending
from gvae_dist.train import Preempted, RunHooks, train_loop
from tests.conftest import REPO, free_port, stop_group, wait_for_http

SETS = [
    "data.num_train=256",
    "data.num_eval=200",
    "data.image_size=32",
    "optim.batch_size=16",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "eval.at_end=false",
    "run.threads=1",
    "optim.steps=20",
    "run.log_every=5",
    "run.checkpoint_every=10",
    "tracking.experiment=outage",
]


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _server(root: Path, port: int) -> subprocess.Popen:
    """``ops/mlflow_server.sh`` on ``port`` over the store in ``root``."""
    log = open(root / f"server-{port}.log", "w")
    proc = subprocess.Popen(
        [
            "bash",
            str(REPO / "ops" / "mlflow_server.sh"),
            str(port),
            f"sqlite:///{root / 'db.sqlite'}",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
    except BaseException:
        stop_group(proc)
        raise
    return proc


class _KillServerAfter(RunHooks):
    """SIGKILLs the server's process group right after the checkpoint of ``step``."""

    def __init__(self, proc: subprocess.Popen, step: int):
        self.proc, self.step = proc, step

    def report(self, metrics, checkpoint_dir) -> None:
        if metrics["step"] == self.step:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def test_what_is_owed_merges_per_run_and_holds_no_credentials(tmp_path):
    uri = "http://alice:s3cret@127.0.0.1:5000"
    owe(tmp_path, "run-a", uri, [15])
    owe(tmp_path, "run-a", uri, [20, 15], "FINISHED")
    owe(tmp_path, "run-b", uri, status="KILLED")
    assert read_pending(tmp_path)["runs"] == {
        "run-a": {"status": "FINISHED", "steps": [15, 20]},
        "run-b": {"status": "KILLED", "steps": []},
    }
    assert "s3cret" not in (tmp_path / PENDING_FILE).read_text()


def test_a_status_the_launcher_cannot_set_is_recorded(tmp_path, caplog):
    """The Ray driver's ``close_run`` (FAILED / KILLED) against a store that does not answer."""
    cfg = load_config(None, [f"run.output_dir={tmp_path}", f"tracking.uri=http://127.0.0.1:{free_port()}"])
    with pytest.warns(RuntimeWarning, match="run status update failed"):
        close_run(cfg, "run-a", "FAILED")
    assert read_pending(cfg.run_dir())["runs"] == {"run-a": {"status": "FAILED", "steps": []}}
    assert "could not be marked FAILED" in caplog.text


@pytest.mark.integration
def test_a_run_resumed_while_its_server_is_down_keeps_its_id_and_owes_the_rest(mlflow_server, tmp_path, capsys):
    """A requeued run (say after SLURM preemption) starts while the server is still down: it does
    not lose its MLflow run id (the next checkpoints would name none, and a later resume would open
    a new run); the steps it trains and its status are owed to that run, then settled. (The
    session's server, not killed here: its start is shared with other modules.)"""
    from mlflow.tracking import MlflowClient

    out, stop = tmp_path / "out", tmp_path / "stop"
    store = mlflow_server.url
    stop.touch()  # preempted at the first log step (5): checkpoint, MLflow run KILLED
    sets = [*SETS, f"run.output_dir={out}", "tracking.experiment=outage-resumed"]
    with pytest.raises(Preempted):
        train_loop(load_config(None, [*sets, f"tracking.uri={store}", f"run.stop_file={stop}"]))
    stop.unlink()
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("outage-resumed").experiment_id])
    assert run.info.status == "KILLED"
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.warns(RuntimeWarning, match="training continues without tracking"):
        resumed = train_loop(load_config(None, [*sets, f"tracking.uri={dead}"]))
    assert resumed.step == 20 and resumed.tracking_run_id == run.info.run_id
    # step 5: the run/resumed_from_step point; its metrics.jsonl row is on the store already
    assert read_pending(resumed.run_dir)["runs"] == {run.info.run_id: {"status": "FINISHED", "steps": [5, 10, 15, 20]}}
    assert main(["tracking", "sync", str(resumed.run_dir), "--set", f"tracking.uri={store}"]) == 0
    assert "of 3 step(s) (10..20), status FINISHED" in capsys.readouterr().out
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert _histories(client, run.info.run_id, ["train/loss", "train/kl"]) == {
        "train/loss": [5, 10, 15, 20],
        "train/kl": [5, 10, 15, 20],
    }
    assert not (resumed.run_dir / PENDING_FILE).exists()


def _histories(client, run_id: str, keys) -> dict[str, list[int]]:
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


@pytest.mark.integration
@pytest.mark.slow
def test_killed_server_run_is_settled_finished_with_each_step_once(tmp_path, caplog, capsys):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "server"
    root.mkdir()
    out = tmp_path / "out"
    port = free_port()
    uri = f"http://alice:s3cret@127.0.0.1:{port}"  # credentials must not reach the file
    server = _server(root, port)
    try:
        caplog.set_level(logging.WARNING, logger="gvae_dist.tracking")
        with pytest.warns(RuntimeWarning, match="training continues without tracking"):
            result = train_loop(
                load_config(None, [*SETS, f"run.output_dir={out}", f"tracking.uri={uri}"]), _KillServerAfter(server, 10)
            )
    finally:
        stop_group(server)
    run_id, run_dir = result.tracking_run_id, result.run_dir
    assert result.step == 20 and run_id is not None
    text = (run_dir / PENDING_FILE).read_text()
    assert json.loads(text)["runs"] == {run_id: {"status": "FINISHED", "steps": [15, 20]}}
    assert "s3cret" not in text and "alice:***@127.0.0.1" in text
    said = [r.getMessage() for r in caplog.records if run_id in r.getMessage()]
    assert len(said) == 1 and f"gvae-dist tracking sync {run_dir}" in said[0], said

    # the server still down: sync keeps the debt (exit 1); the saved URI is masked, so it asks for the real one
    assert main(["tracking", "sync", str(run_dir), "--set", f"tracking.uri={uri}"]) == 1
    assert (run_dir / PENDING_FILE).read_text() == text
    assert main(["tracking", "sync", str(run_dir)]) == 2
    assert "credentials masked" in capsys.readouterr().err

    # the same store and port (MLflow caches a run's artifact location per process, server included)
    server = _server(root, port)
    try:
        client = MlflowClient(f"http://127.0.0.1:{port}")
        assert client.get_run(run_id).info.status == "RUNNING"
        assert _histories(client, run_id, ["train/loss"]) == {"train/loss": [5, 10]}
        # the same command again: the run has finished training, so it only returns, settling first
        argv = ["train", *[a for kv in [*SETS, f"run.output_dir={out}", f"tracking.uri={uri}"] for a in ("--set", kv)]]
        assert main(argv) == 0
        said = capsys.readouterr().out
        assert f"MLflow run {run_id}: sent " in said and "of 2 step(s) (15..20), status FINISHED" in said
        assert not (run_dir / PENDING_FILE).exists()
        assert client.get_run(run_id).info.status == "FINISHED"
        keys = {
            mlflow_metric_name(k)
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            for k in json.loads(line)
        } - {None}
        assert "train/loss" in keys and "eval/dci_mean" not in keys
        want = {k: [5, 10, 15, 20] for k in keys}
        assert _histories(client, run_id, keys) == want

        # a debt for steps the server already holds: sync sets the status and sends no step twice
        owe(run_dir, run_id, uri, [10, 15, 20], "KILLED")
        assert main(["tracking", "sync", str(run_dir), "--set", f"tracking.uri={uri}"]) == 0
        assert "sent 0 metric point(s) of 0 step(s), status KILLED" in capsys.readouterr().out
        assert client.get_run(run_id).info.status == "KILLED" and not (run_dir / PENDING_FILE).exists()
        assert _histories(client, run_id, keys) == want
    finally:
        stop_group(server)
