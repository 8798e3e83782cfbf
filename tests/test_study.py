"""The study runner: a 2-cell tiny study writes results, a rerun skips, bad files name the key."""

from __future__ import annotations

import contextlib
import csv
import json
import re
from pathlib import Path

import pytest

from gvae_dist.config import ConfigError
from gvae_dist.study import load_study, plan_cells, run_study
from tests.conftest import process_alive

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.image_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "data.num_train=256",
    "data.num_eval=300",
    "eval.num_train=150",
    "eval.num_test=100",
    "optim.steps=5",
    "optim.batch_size=32",
    "tracking.enabled=false",
    "run.log_every=5",
]


def _write(tmp_path, body: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(body)
    return path


def _tiny_study(tmp_path) -> Path:
    presets = [str(REPO / "configs" / f"faces_beta_{v}.yaml") for v in ("gated", "ungated")]
    lines = "\n".join(f"    - {o}" for o in TINY)
    return _write(
        tmp_path,
        f"study:\n  output_dir: {tmp_path / 'out'}\n  presets: {presets}\n"
        f"  seeds: [0]\n  label_flip_probs: [0.1]\n  overrides:\n{lines}\n",
    )


def test_two_cell_study_writes_results_and_resumes(tmp_path):
    spec = load_study(_tiny_study(tmp_path))
    first = run_study(spec, log=lambda msg: None)
    assert len(first["ran"]) == 2 and first["skipped"] == []
    rows = list(csv.DictReader(open(first["paths"]["csv"])))
    assert sorted(r["variant"] for r in rows) == ["gated", "ungated"]
    assert all(r["objective"] == "beta" and float(r["label_flip_prob"]) == 0.1 for r in rows)
    assert all(0.0 <= float(r["D"]) <= 1.0 for r in rows)
    table = first["paths"]["table"].read_text()
    assert "| beta | gated | 0.1 | 1 |" in table and "| beta | ungated | 0.1 | 1 |" in table
    assert first["paths"]["plot"].stat().st_size > 0
    # the seed-paired comparison: one seed gives the difference without an interval
    by_variant = {r["variant"]: float(r["DCI_mean"]) for r in rows}
    comparison = first["paths"]["comparison"].read_text()
    delta = by_variant["gated"] - by_variant["ungated"]
    assert "| beta | 0.1 | 0 | " in comparison and f"{delta:+.3f} (n=1)" in comparison
    # the flexible probe's informativeness (eval.flexible_probe, on by default) reaches the rows
    # and its paired difference the comparison
    probe = {r["variant"]: float(r["I_probe"]) for r in rows}
    assert all(0.0 <= v <= 1.0 for v in probe.values())
    assert "Δ I_probe" in comparison and f"{probe['gated'] - probe['ungated']:+.3f} (n=1)" in comparison
    # gated and un-gated traversals side by side: as wide as the two panels together
    from matplotlib.image import imread

    pair = imread(first["paths"]["traversals_beta"])
    one = imread(plan_cells(spec)[0].cfg.run_dir() / "eval" / "traversals.png")
    assert pair.shape[1] == 2 * one.shape[1] and pair.shape[0] > one.shape[0]
    cells = plan_cells(spec)
    assert cells[0].cfg.data.label_flip_prob == 0.1 and cells[0].cfg.optim.steps == 5
    mtimes = [(c.cfg.run_dir() / "metrics.json").stat().st_mtime_ns for c in cells]

    second = run_study(spec, log=lambda msg: None)
    assert second["ran"] == [] and len(second["skipped"]) == 2
    assert [(c.cfg.run_dir() / "metrics.json").stat().st_mtime_ns for c in cells] == mtimes


@pytest.mark.parametrize(
    "body, key",
    [
        ("study:\n  objectives: [beta]\n  seedz: [0]\n", "study.seedz: unknown key (did you mean 'seeds'?)"),
        ("study:\n  objectives: [beta]\n  base_dir: /elsewhere\n", "study.base_dir: unknown key"),
        ("study:\n  objectives: [beta]\n  seeds: [0, true]\n", "study.seeds.1: expected an integer"),
        ("study:\n  objectives: [beta]\n  executor: slurm\n", "study.executor: 'slurm' is not allowed"),
        ("study:\n  objectives: [beta]\n  seeds: 3\n", "study.seeds"),
        ("study:\n  objectives: [beta]\n  variants: [gatd]\n", "study.variants"),
        ("study:\n  objectives: [beta]\n  label_flip_probs: [1.5]\n", "study.label_flip_probs"),
        ("study:\n  objectives: [beta]\n  overrides: [optim.steps]\n", "study.overrides"),
        ("study:\n  seeds: [0]\n", "study.presets"),
        ("seeds: [0]\n", "'study'"),
    ],
)
def test_bad_study_file_names_the_key(tmp_path, body, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_study(_write(tmp_path, body))


def test_bad_cell_override_fails_before_training(tmp_path):
    path = _write(
        tmp_path,
        f"study:\n  output_dir: {tmp_path}\n  objectives: [beta]\n"
        "  preset: '" + str(REPO / "configs") + "/faces_{objective}_{variant}.yaml'\n"
        "  overrides: [optim.stepz=3]\n",
    )
    with pytest.raises(ConfigError, match="stepz"):
        plan_cells(load_study(path))


def test_shipped_study_file_runs_each_ungated_cell_once_per_seed():
    spec = load_study(REPO / "configs" / "study_faces.yaml")
    cells = plan_cells(spec)
    seeds, flips = len(spec.seeds), len(spec.label_flip_probs)
    assert flips > 1  # otherwise this test shows nothing
    assert len(cells) == len(spec.objectives) * seeds * (flips + 1)
    ungated = [c for c in cells if c.variant == "ungated"]
    # the un-gated model never reads the weak labels: one run per seed serves every noise level
    assert {c.label_flip_prob for c in ungated} == {spec.label_flip_probs[0]}
    assert len({(c.objective, c.seed) for c in ungated}) == len(ungated)
    assert {(c.objective, c.variant) for c in cells} == {
        (o, v) for o in ("beta", "infovae", "dip2") for v in ("gated", "ungated")
    }


def test_parallel_cells_on_ray_and_a_failed_cell_is_named(tmp_path, ray_env):
    """`gvae-dist study --parallel 2`: two cells at once as Ray tasks on a private local cluster
    (in a subprocess: a local cluster started and stopped in this process leaves Ray state that
    breaks the next cluster a later test starts here). One cell diverges (absurd learning rate):
    the other still finishes and is collected, the error names the bad cell, exit code 1, and a
    rerun retries only the failed cell."""
    import subprocess
    import sys

    bad = tmp_path / "diverges.yaml"
    bad.write_text(f"extends: {REPO / 'configs' / 'faces_beta_ungated.yaml'}\noptim:\n  lr: 1.0e+12\n")
    presets = [str(REPO / "configs" / "faces_beta_gated.yaml"), str(bad)]
    lines = "\n".join(f"    - {o}" for o in TINY)
    path = _write(
        tmp_path,
        f"study:\n  output_dir: {tmp_path / 'out'}\n  presets: {presets}\n  seeds: [0]\n  overrides:\n{lines}\n",
    )
    cmd = [sys.executable, "-m", "gvae_dist.cli", "study", "--config", str(path), "--parallel", "2"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "2 at a time on Ray" in first.stdout, first.stdout[-3000:]
    assert "1 of 2 study cells failed" in first.stderr and "diverges__noise0__seed0" in first.stderr
    assert "non-finite" in first.stderr, first.stderr[-3000:]
    good, failed = plan_cells(load_study(path))
    assert (good.cfg.run_dir() / "eval" / "metrics.json").is_file()
    assert "step" in (good.cfg.run_dir() / "train.log").read_text()  # the cell's output, not the driver's
    assert not (failed.cfg.run_dir() / "metrics.json").exists()
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert [r["run"] for r in rows] == [good.name]
    again = subprocess.run(cmd[:-2], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 1 and "skipped" in again.stdout and "1 of 2 study cells failed" in again.stderr


def test_local_workers_stop_when_the_study_driver_is_killed(tmp_path):
    """`gvae-dist study --parallel 2 --executor local` killed with SIGKILL (no handler can run):
    its worker processes, which would otherwise go on training their cells (and the ones queued
    for them) into the study's run directories, stop within a few seconds, and no cell is
    recorded as done."""
    import signal
    import subprocess
    import sys
    import time

    psutil = pytest.importorskip("psutil")
    presets = [str(REPO / "configs" / f"faces_beta_{v}.yaml") for v in ("gated", "ungated")]
    long_run = [o for o in TINY if not o.startswith("optim.steps")] + ["optim.steps=100000", "run.log_every=10"]
    lines = "\n".join(f"    - {o}" for o in long_run)
    path = _write(
        tmp_path,
        f"study:\n  output_dir: {tmp_path / 'out'}\n  presets: {presets}\n  seeds: [0]\n  overrides:\n{lines}\n",
    )
    cmd = [sys.executable, "-m", "gvae_dist.cli", "study", "--config", str(path), "--parallel", "2"]
    driver = subprocess.Popen(
        [*cmd, "--executor", "local"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    cells = plan_cells(load_study(path))
    logs = [c.cfg.run_dir() / "train.log" for c in cells]
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while not all(log.is_file() and "step" in log.read_text() for log in logs):  # both cells training
            assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the cells never started training"
            time.sleep(0.5)
        workers += [p for p in psutil.Process(driver.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, workers
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(process_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p.pid for p in workers if process_alive(p)], "study workers outlived their driver"
        assert not any((c.cfg.run_dir() / "result.json").exists() for c in cells)
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):  # a failure before the kill: take its workers too
            workers += psutil.Process(driver.pid).children(recursive=True)
        driver.kill()
        for p in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def test_ablation_study_reuses_the_main_studys_ungated_cells():
    """configs/study_ablation.yaml promises that the main study's un-gated run directories can
    be copied in and collected: same names and same config fingerprints."""
    main = {c.name: c for c in plan_cells(load_study(REPO / "configs" / "study_faces.yaml"))}
    ablation = plan_cells(load_study(REPO / "configs" / "study_ablation.yaml"))
    ungated = [c for c in ablation if c.variant == "ungated"]
    assert len(ungated) == 5 and len(ablation) == 10
    for cell in ungated:
        assert cell.fingerprint == main[cell.name].fingerprint, cell.name
    gated = [c for c in ablation if c.variant == "gated"]
    assert all(c.cfg.gate.decoder and c.name not in main for c in gated)


def test_gated_overrides_change_the_gated_cells_only(tmp_path):
    """study.gated_overrides / --set-gated: an ablation arm (here a larger identity share) reaches
    the gated cells, while the un-gated cells keep the fingerprint of the study without it, so
    they can be shared; an override that turns the gate off is refused, naming the key."""
    body = (
        f"study:\n  output_dir: {tmp_path}\n  objectives: [beta]\n  seeds: [0, 1]\n"
        "  preset: '" + str(REPO / "configs") + "/faces_{objective}_{variant}.yaml'\n"
    )
    plain = {c.name: c for c in plan_cells(load_study(_write(tmp_path, body)))}
    arm = plan_cells(
        load_study(
            _write(tmp_path, body + "  gated_overrides: [pairing.identity=0.75]\n"),
            extra_gated=["pairing.shared_factor=0.25"],
        )
    )
    assert len(arm) == len(plain) == 4
    for cell in arm:
        if cell.variant == "ungated":
            assert cell.fingerprint == plain[cell.name].fingerprint and cell.cfg.pairing.identity == 1.0
        else:
            assert (cell.cfg.pairing.identity, cell.cfg.pairing.shared_factor) == (0.75, 0.25)
            assert cell.fingerprint != plain[cell.name].fingerprint
    with pytest.raises(ConfigError, match="study.gated_overrides"):
        plan_cells(load_study(_write(tmp_path, body + "  gated_overrides: [gate.enabled=false]\n")))
    with pytest.raises(ConfigError, match="study.gated_overrides"):
        load_study(_write(tmp_path, body + "  gated_overrides: [pairing.identity]\n"))


def test_fingerprint_ignores_only_the_keys_a_cell_cannot_read(tmp_path):
    """An un-gated, identity-only cell does not depend on the gate's options or the partner
    search, so studies whose gated presets differ there share their un-gated cells; a gated
    cell does depend on them. A result.json written with an older fingerprint function is
    matched by its saved config."""
    import copy
    import json

    from gvae_dist.config import load_config
    from gvae_dist.study import RESULT_FILE, _finished, fingerprint

    ungated = load_config(REPO / "configs" / "faces_beta_ungated.yaml")
    gated = load_config(REPO / "configs" / "faces_beta_gated.yaml")
    for key, other in [("gate.decoder", False), ("gate.closed_code", "input"), ("pairing.partner", "batch")]:
        section, name = key.split(".")
        changed_u, changed_g = copy.deepcopy(ungated), copy.deepcopy(gated)
        setattr(getattr(changed_u, section), name, other)
        setattr(getattr(changed_g, section), name, other)
        assert fingerprint(changed_u) == fingerprint(ungated), key
        assert fingerprint(changed_g) != fingerprint(gated), key
    changed = copy.deepcopy(ungated)
    changed.objective.beta = 2.0  # what it computes still counts
    assert fingerprint(changed) != fingerprint(ungated)
    # a key added later (objective.warmup_steps) at the default that reproduces older runs:
    # a saved config without it is the same experiment; any other value is not
    before = ungated.to_dict()
    del before["objective"]["warmup_steps"]
    assert fingerprint(before) == fingerprint(ungated)
    changed = copy.deepcopy(ungated)
    changed.eval.jobs = 1  # how many processes fit the regressors: not what the cell computes
    assert fingerprint(changed) == fingerprint(ungated)
    changed = copy.deepcopy(ungated)
    changed.objective.warmup_steps = 500
    assert fingerprint(changed) != fingerprint(ungated)

    cell = plan_cells(load_study(_ungated_study(tmp_path)))[0]
    run_dir = cell.cfg.run_dir()
    run_dir.mkdir(parents=True)
    old = cell.cfg.to_dict()
    old["gate"]["decoder"] = not old["gate"]["decoder"]
    (run_dir / RESULT_FILE).write_text(
        json.dumps({"fingerprint": "0123456789abcdef", "config": old, "eval": {"dci_mean": 0.5}})
    )
    assert _finished(cell)["eval"]["dci_mean"] == 0.5
    old["objective"]["beta"] = 7.0
    (run_dir / RESULT_FILE).write_text(json.dumps({"fingerprint": "0123456789abcdef", "config": old}))
    with pytest.raises(ConfigError, match="objective.beta"):
        _finished(cell)


def _ungated_study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        "study:\n"
        f"  output_dir: {tmp_path / 'out'}\n"
        "  objectives: [beta]\n  variants: [ungated]\n"
        f"  preset: {REPO / 'configs'}/faces_{{objective}}_{{variant}}.yaml\n"
        "  seeds: [0]\n  label_flip_probs: [0.0]\n"
    )
    return path


def test_shipped_imported_study_runs_on_shards_exported_and_imported(tmp_path):
    """configs/study_imported_beta.yaml as a user repeats the study on their own labelled data:
    faces exported to an .npz, imported with --source arrays, the study pointed at those shards
    with its own partition mapping. Both cells train from the shards, evaluate on their held-out
    split and score the factors the given partitions name."""
    from gvae_dist.cli import main

    npz, shards = tmp_path / "mine.npz", tmp_path / "shards"
    size = ["--set", "data.image_size=32"]
    assert main(["data", "export", "--source", "faces", "--num", "500", "--out", str(npz), *size]) == 0
    build = ["data", "build", "--source", "arrays", "--input", str(npz), "--out", str(shards), "--workers", "1"]
    assert main([*build, *size, "--set", "data.eval_fraction=0.5"]) == 0
    mapping = "[{name: pose, size: 3, factors: [yaw, pitch]}, {name: smile, size: 2, factors: [mouth]}, "
    mapping += "{name: rest, size: 3}]"
    sets = [
        *(o for o in TINY if not o.startswith(("data.num", "eval.num"))),
        "eval.num_train=150",
        "eval.num_test=100",
        f"data.path={shards}",
        f"partitions={mapping}",
        "model.latent_dim=8",
    ]
    argv = ["study", "-c", str(REPO / "configs" / "study_imported_beta.yaml"), "--out", str(tmp_path / "out")]
    assert main([*argv, *(a for s in sets for a in ("--set", s)), "--cells", "*seed0"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert sorted(r["variant"] for r in rows) == ["gated", "ungated"]
    for cell in plan_cells(load_study(REPO / "configs" / "study_imported_beta.yaml", sets))[:2]:
        assert (cell.cfg.data.source, cell.cfg.data.path) == ("shards", str(shards))
    for run in (tmp_path / "out" / "runs").glob("*seed0"):
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert metrics["targeted_factors"] == ["yaw", "pitch", "mouth"], run.name
        assert "informativeness/brow" in metrics  # every imported factor is still scored (secondary DCI)
