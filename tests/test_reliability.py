"""Fault injection on the run directory (docs/reliability.md).

Each test is one probe from that table: a concurrent run, a stale lock, a resume with another
config, a damaged newest checkpoint, leftovers of a killed run, Ctrl-C on a real ``gvae-dist
train`` process. Every resumed run is compared step by step with an uninterrupted one, and
``metrics.jsonl`` must hold each step once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gvae_dist.checkpoint import list_checkpoints
from gvae_dist.cli import main
from gvae_dist.config import ConfigError, load_config
from gvae_dist.rundir import RunLock, RunLocked
from gvae_dist.train import train_loop

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.num_train=256",
    "data.num_eval=200",
    "data.image_size=32",
    "optim.batch_size=16",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "eval.at_end=false",
    "tracking.enabled=false",
    "run.threads=1",
    "run.log_every=5",
]


def _cfg(out: Path, *extra: str):
    return load_config(None, [*TINY, f"run.output_dir={out}", *extra])


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _curve(run_dir: Path) -> dict[int, float]:
    """Loss per logged step, asserting each step is there exactly once."""
    steps = [int(r["step"]) for r in _rows(run_dir)]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    assert steps == sorted(steps), steps
    return {int(r["step"]): r["loss"] for r in _rows(run_dir)}


def _same_curve(got: Path, want: Path) -> None:
    a, b = _curve(got), _curve(want)
    assert list(a) == list(b)
    # CPU kernels are deterministic here; allow float reordering noise only
    torch.testing.assert_close(list(a.values()), list(b.values()), rtol=1e-5, atol=1e-4)


def test_a_second_run_on_a_locked_run_directory_fails_fast_naming_the_holder(tmp_path, capsys):
    cfg = _cfg(tmp_path, "optim.steps=5")
    with RunLock(cfg.run_dir()):
        with pytest.raises(RunLocked, match=rf"in use by pid {os.getpid()} on host {socket.gethostname()}"):
            train_loop(cfg)
        # the CLI: exit 73 with the same message, and nothing written into the run directory
        args = [
            "train",
            *[a for kv in TINY for a in ("--set", kv)],
            "--set",
            f"run.output_dir={tmp_path}",
            "--set",
            "optim.steps=5",
        ]
        assert main(args) == 73
        assert "pick another run.name" in capsys.readouterr().err
        assert sorted(p.name for p in cfg.run_dir().iterdir()) == [".lock"]
    assert train_loop(cfg).step == 5  # released: the run goes ahead


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from gvae_dist.rundir import RunLock; "
            f"RunLock({str(tmp_path / 'run')!r}).acquire(); print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"pid {holder.pid} on host"):
            RunLock(tmp_path / "run").acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        lock = RunLock(tmp_path / "run").acquire()  # the kernel dropped the dead holder's lock
        assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_resume_refuses_a_config_that_computes_something_else(tmp_path):
    first = train_loop(_cfg(tmp_path, "optim.steps=10", "run.checkpoint_every=5"))
    saved_config, saved_rows = (first.run_dir / "config.yaml").read_text(), _rows(first.run_dir)
    with pytest.raises(
        ConfigError,
        match=r"different config .*step_00000010\); differing keys: "
        r"objective.beta: 4.0 there, 8.0 here.*run.resume=force",
    ):
        train_loop(_cfg(tmp_path, "optim.steps=20", "objective.beta=8"))
    with pytest.raises(ConfigError, match=r"objective.name: 'beta' there, 'infovae' here"):
        train_loop(_cfg(tmp_path, "optim.steps=20", "objective.name=infovae"))
    # the refused runs changed nothing in the run directory
    assert (first.run_dir / "config.yaml").read_text() == saved_config
    assert _rows(first.run_dir) == saved_rows
    with pytest.raises(ConfigError, match="run.resume: false, but .* holds checkpoints"):
        train_loop(_cfg(tmp_path, "optim.steps=20", "run.resume=false"))
    # where/how keys and a longer optim.steps resume: the run is extended
    more = train_loop(
        _cfg(
            tmp_path,
            "optim.steps=15",
            "run.log_every=3",
            "run.threads=2",
            "run.keep_checkpoints=3",
            "distributed.max_failures=1",
            "tracking.experiment=x",
        )
    )
    assert more.step == 15 and [int(r["step"]) for r in _rows(more.run_dir)][-3:] == [10, 12, 15]
    with pytest.warns(RuntimeWarning, match="run.resume: force.*objective.beta"):
        forced = train_loop(_cfg(tmp_path, "optim.steps=20", "objective.beta=8", "run.resume=force"))
    assert forced.step == 20 and "beta: 8.0" in (forced.run_dir / "config.yaml").read_text()


def test_damaged_newest_checkpoint_falls_back_and_the_curve_matches(tmp_path, caplog):
    """The newest checkpoint is torn: resume warns naming its file, sets it aside, restores
    the previous one, drops the metrics rows after it, and ends on the uninterrupted curve.
    Leftovers of a killed run (a checkpoint temp dir, Ray restore copies) are removed."""
    common = ["run.checkpoint_every=10", "run.keep_checkpoints=3"]
    full = train_loop(_cfg(tmp_path / "full", "optim.steps=30", *common))
    split = train_loop(_cfg(tmp_path / "split", "optim.steps=20", *common)).run_dir
    damaged = split / "checkpoints" / "step_00000020" / "state.pt"
    damaged.write_bytes(damaged.read_bytes()[:1000])  # a torn write
    (split / "checkpoints" / ".tmp-step_00000025-1").mkdir()
    (split / ".restore" / "rank0").mkdir(parents=True)
    resumed = train_loop(_cfg(tmp_path / "split", "optim.steps=30", *common))
    assert f"checkpoint {damaged} is damaged and is skipped" in caplog.text
    aside = list((split / "checkpoints").glob("damaged-step_00000020-*"))
    assert len(aside) == 1 and (aside[0] / "state.pt").stat().st_size == 1000
    assert [p.name for p in list_checkpoints(split / "checkpoints")] == [
        "step_00000010",
        "step_00000020",
        "step_00000030",
    ]
    assert not list((split / "checkpoints").glob(".tmp-*")) and not (split / ".restore").exists()
    assert resumed.step == 30
    _same_curve(split, full.run_dir)

    for ckpt in list_checkpoints(split / "checkpoints"):  # nothing loads: a clear error naming them
        (ckpt / "state.pt").write_bytes(b"junk")
    with pytest.raises(
        ValueError,
        match=r"no checkpoint of this run can be loaded(.|\n)*"
        r"step_00000030/state.pt(.|\n)*step_00000010/state.pt",
    ):
        train_loop(_cfg(tmp_path / "split", "optim.steps=40", *common))


def _train_cmd(out: Path, *extra: str) -> list[str]:
    sets = [*TINY, f"run.output_dir={out}", "tracking.enabled=true", "tracking.image_every=0", *extra]
    return [sys.executable, "-m", "gvae_dist.cli", "train", *[a for kv in sets for a in ("--set", kv)]]


def test_ctrl_c_exits_130_marks_mlflow_killed_and_resume_logs_each_step_once(tmp_path):
    """A real ``gvae-dist train`` gets SIGINT some steps after a checkpoint: exit 130 with the
    resume hint, MLflow run KILLED, lock released. Running the command again resumes it: the
    rows and MLflow points between the checkpoint and the interrupt are not there twice, and
    the curve equals an uninterrupted run's."""
    from mlflow.tracking import MlflowClient

    common = ["run.checkpoint_every=20"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run_dir = tmp_path / "run" / "gvae"
    proc = subprocess.Popen(
        _train_cmd(tmp_path / "run", "optim.steps=2000", *common),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        # SIGINT as a terminal gives it: a harness that runs the suite in the background may hand
        # its children SIGINT ignored (inherited across exec), and Ctrl-C is what this test is about
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").is_file() or _rows(run_dir)[-1]["step"] < 25:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, f"{err}\n--- stdout (last lines) ---\n{out[-2000:]}"
    stopped_at = max(int(r["step"]) for r in _rows(run_dir))
    last = list_checkpoints(run_dir / "checkpoints")[-1]
    assert "interrupted at step " in err and f"; last checkpoint {last}; run the same command to resume" in err
    assert stopped_at > int(last.name.split("_")[1])  # rows after the checkpoint: logged again later
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("gvae-dist").experiment_id])
    assert run.info.status == "KILLED"
    RunLock(run_dir).acquire().release()  # the lock went with the process

    resumed = train_loop(
        load_config(
            None,
            [
                *TINY,
                f"run.output_dir={tmp_path / 'run'}",
                "tracking.enabled=true",
                "tracking.image_every=0",
                "optim.steps=60",
                *common,
            ],
        )
    )
    full = train_loop(_cfg(tmp_path / "full", "optim.steps=60", *common))
    _same_curve(resumed.run_dir, full.run_dir)
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and resumed.tracking_run_id == run.info.run_id
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(5, 61, 5))  # each step once
    assert [m.value for m in client.get_metric_history(run.info.run_id, "run/resumed_from_step")] == [
        int(last.name.split("_")[1])
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_ray_run_is_locked_and_resumes_the_newest_loadable_checkpoint_on_disk(ray_env, tmp_path):
    """On Ray: a locked run directory is refused before Ray starts; the workers restore the
    newest checkpoint on disk that loads, not only what Ray registered (here: nothing, as
    when its controller lags the reports), falling back past a damaged one, and the curve
    equals the uninterrupted one with each step once."""
    from gvae_dist.launch import launch

    common = ["run.checkpoint_every=10", "run.keep_checkpoints=3"]
    full = train_loop(_cfg(tmp_path / "full", "optim.steps=30", *common))
    split = train_loop(_cfg(tmp_path / "split", "optim.steps=20", *common)).run_dir
    damaged = split / "checkpoints" / "step_00000020" / "state.pt"
    damaged.write_bytes(b"\0" * 64)
    cfg = _cfg(tmp_path / "split", "optim.steps=30", "distributed.workers=1", "distributed.cpus_per_worker=1", *common)
    with RunLock(split), pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
        launch(cfg)
    assert not (tmp_path / "split" / "ray").exists()  # refused before anything started
    result = launch(cfg)
    assert result.step == 30
    assert len(list((split / "checkpoints").glob("damaged-step_00000020-*"))) == 1
    _same_curve(split, full.run_dir)
    RunLock(split).acquire().release()  # the driver let go
