"""One GPU, no cluster: the CLI with only the core stack importable.

Every command runs in a subprocess whose ``sitecustomize`` sets ``sys.modules[name] = None`` for
Ray, DALI, MLflow and WebDataset, so importing any of them fails there as if it were not
installed: ``train`` on shards (the standard-library tar reader), ``eval``, ``ops/gpu_study.sh``
(budget probe + a two-cell study in local processes), a cell of that study run again on
"another machine" and merged, a refused merge, and the one-line messages of the features that
do need a missing backend.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gvae_dist.config import DataConfig, load_config
from gvae_dist.data.importers import build_dataset

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("ray", "nvidia.dali", "mlflow", "webdataset")
TINY = [
    "data.image_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "data.num_train=128",
    "data.num_eval=200",
    "eval.num_train=100",
    "eval.num_test=60",
    "eval.method=lasso",
    "optim.steps=4",
    "optim.batch_size=16",
    "run.log_every=2",
    "run.threads=1",
]


@pytest.fixture(scope="module")
def core_env(tmp_path_factory) -> dict[str, str]:
    """Environment of a Python with Ray, DALI, MLflow and WebDataset made unimportable."""
    block = tmp_path_factory.mktemp("block")
    (block / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = os.pathsep.join([str(block), str(REPO)])
    env["JOBLIB_MULTIPROCESSING"] = "0"  # DCI fits in this process: no worker start-up per eval
    return env


def _cli(env, cwd, *args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gvae_dist.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _sets(items) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_blocked_backends_are_unimportable(core_env, tmp_path):
    code = (
        f"import importlib\nfor m in {BLOCKED!r}:\n    try:\n        importlib.import_module(m)\n"
        "    except ImportError:\n        continue\n    raise SystemExit(m + ' imported')\n"
        f"from gvae_dist.optional import available\nassert not any(map(available, {BLOCKED!r}))\n"
        "assert available('torch') and available('PIL')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=core_env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr


def test_train_on_shards_then_eval_without_optional_backends(core_env, tmp_path):
    shards = tmp_path / "shards"
    build_dataset("faces", shards, DataConfig(image_size=32), num=200, shard_size=20, progress=False)
    sets = [
        *TINY,
        "data.source=shards",
        f"data.path={shards}",
        f"run.output_dir={tmp_path / 'runs'}",
        "eval.at_end=false",
    ]
    train = _cli(core_env, tmp_path, "train", *_sets(sets))  # tracking.enabled stays true
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Traceback" not in train.stderr
    warnings = [ln for ln in train.stderr.splitlines() if "MLflow is not installed" in ln]
    assert len(warnings) == 1 and "gvae-dist[mlflow]" in warnings[0]
    # 20% of the 200 samples went to eval shards of their own (data.eval_fraction)
    assert "data: webdataset backend, train split of" in train.stdout
    assert "160 samples in 8 shards" in train.stdout
    assert "MLflow run" not in train.stdout
    ckpt = tmp_path / "runs" / "gvae" / "checkpoints" / "step_00000004"
    assert (ckpt / "config.yaml").is_file()

    ev = _cli(
        core_env,
        tmp_path,
        "eval",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "ev"),
        "--json",
        "--set",
        "eval.num_train=24",
        "--set",
        "eval.num_test=16",
    )  # the 40 held-out samples
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads(ev.stdout[ev.stdout.index("{") :])
    assert 0.0 <= result["disentanglement"] <= 1.0 and result["neg_elbo"] > 0
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_features_that_need_a_missing_backend_say_so_in_one_line(core_env, tmp_path):
    """Each command exits 2 with one stderr line naming the feature and the extra to install."""
    study = _study_file(tmp_path)
    cases = {
        "ray": ["train", *_sets(TINY), "--workers", "2"],
        "ray ": ["tune", "--space", str(REPO / "tune_spaces" / "beta.yaml")],
        "ray  ": ["study", "--config", str(study), "--parallel", "2", "--executor", "ray"],
        "dali": ["train", *_sets([*TINY, "data.source=shards", f"data.path={tmp_path}", "data.backend=dali"])],
    }
    code = (
        "import contextlib, io, json, sys\nfrom gvae_dist.cli import main\nout = {}\n"
        "for key, argv in json.loads(sys.argv[1]).items():\n    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n        rc = main(argv)\n"
        "    out[key] = [rc, err.getvalue()]\nprint(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cases)],
        env=core_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    features = {"ray": "--workers", "ray ": "gvae-dist tune", "ray  ": "--executor ray", "dali": "data.backend=dali"}
    for key, (rc, err) in got.items():
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, (key, err)
        assert features[key] in lines[0] and f"pip install 'gvae-dist[{key.strip()}]'" in lines[0], lines[0]


def _study_file(tmp_path, extra: tuple[str, ...] = ()) -> Path:
    presets = [str(REPO / "configs" / f"faces_beta_{v}.yaml") for v in ("gated", "ungated")]
    lines = "\n".join(f"    - {o}" for o in [*TINY, *extra])
    path = tmp_path / "study.yaml"
    path.write_text(
        f"study:\n  output_dir: {tmp_path / 'default_out'}\n  presets: {presets}\n  seeds: [0]\n  overrides:\n{lines}\n"
    )
    return path


@pytest.fixture(scope="module")
def gpu_study(core_env, tmp_path_factory) -> tuple[Path, Path]:
    """ops/gpu_study.sh on a two-cell study at a tiny size on this CPU: the budget probe, then
    both cells in two local processes. Returns (its output folder, the study file)."""
    tmp = tmp_path_factory.mktemp("gpu_study")
    study = _study_file(tmp)
    out = tmp / "out"
    proc = subprocess.run(
        [
            "bash",
            str(REPO / "ops" / "gpu_study.sh"),
            str(out),
            str(study),
            "--probe-steps",
            "4",
            "--probe-every",
            "2",
            "--probe-eval",
            "60",
            "--parallel",
            "2",
        ],
        # with joblib's process pools on (as users run it): a pool left in a
        # cell's worker process once kept the study from ever exiting
        env={
            **{k: v for k, v in core_env.items() if k != "JOBLIB_MULTIPROCESSING"},
            "PYTHON": sys.executable,
            "GVAE_DEADLINE_S": "240",
        },
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, study


def test_gpu_study_script_probes_the_budget_and_reports_each_cell(gpu_study):
    out, _ = gpu_study
    env = json.loads((out / "env.json").read_text())
    assert env["optional"] == {m: False for m in BLOCKED} and env["device"] == "cpu"
    curve = json.loads((out / "curve.json").read_text())
    assert [p["step"] for p in curve["curve"]] == [2, 4] and curve["budget"] in (2, 4)
    report = (out / "report.md").read_text()
    assert "2 finished cell(s); study exit 0" in report
    assert "2 cell(s), 2 at a time in local processes" in (out / "gpu_study.log").read_text()
    for variant in ("gated", "ungated"):
        result = json.loads(
            (out / "study" / "runs" / f"faces_beta_{variant}__noise0__seed0" / "result.json").read_text()
        )
        assert result["steps"] == curve["budget"] and result["steps_per_s"] > 0 and result["seconds"] > 0
        assert f"| faces_beta_{variant}__noise0__seed0 | cpu" in report
    assert (out / "study" / "results.csv").is_file()


def test_study_cells_from_two_machines_merge_and_a_foreign_cell_is_refused(core_env, gpu_study, tmp_path):
    gpu_out, study = gpu_study
    gated, ungated = (f"faces_beta_{v}__noise0__seed0" for v in ("gated", "ungated"))
    budget = json.loads((gpu_out / "curve.json").read_text())["budget"]
    here = tmp_path / "here"
    # this machine runs only the un-gated cell, in this process, at the GPU run's budget
    a = _cli(
        core_env,
        tmp_path,
        "study",
        "--config",
        str(study),
        "--out",
        str(here),
        "--cells",
        "*ungated*",
        "--set",
        f"optim.steps={budget}",
    )
    assert a.returncode == 0, a.stderr[-3000:]
    assert "ran 1, skipped 0" in a.stdout and "Traceback" not in a.stderr
    # ... and picks up the gated cell copied in from the "GPU machine": nothing left to run
    shutil.copytree(gpu_out / "study" / "runs" / gated, here / "runs" / gated)
    b = _cli(core_env, tmp_path, "study", "--config", str(study), "--out", str(here), "--set", f"optim.steps={budget}")
    assert b.returncode == 0, b.stderr[-3000:]
    assert "ran 0, skipped 2" in b.stdout and f"{gated}: done already" in b.stdout
    rows = {r["run"]: r for r in csv.DictReader(open(here / "results.csv"))}
    assert sorted(rows) == [gated, ungated] and all(float(r["steps_per_s"]) > 0 for r in rows.values())

    # a cell made with another learning rate is refused, not re-used or overwritten
    result = (here / "runs" / gated / "result.json").read_text()
    c = _cli(
        core_env,
        tmp_path,
        "study",
        "--config",
        str(study),
        "--out",
        str(here),
        "--set",
        f"optim.steps={budget}",
        "--set",
        "optim.lr=0.01",
    )
    assert c.returncode == 2
    lines = c.stderr.strip().splitlines()
    assert len(lines) == 1 and "different config" in lines[0], c.stderr
    lr = load_config(REPO / "configs" / "faces_beta_gated.yaml").optim.lr
    assert f"optim.lr: {lr:g} there, 0.01 here" in lines[0], lines[0]
    assert (here / "runs" / gated / "result.json").read_text() == result


def test_stdlib_tar_reader_matches_webdataset(tmp_path):
    """The fallback yields WebDataset's samples and shuffle order (needs the real package)."""
    wds = pytest.importorskip("webdataset")
    from gvae_dist.data.stream_wds import shuffle, tar_samples

    build_dataset(
        "faces", tmp_path, DataConfig(image_size=32, eval_fraction=0.0), num=30, shard_size=30, progress=False
    )
    tar = str(sorted(tmp_path.glob("*.tar"))[0])
    ours = list(tar_samples(tar))
    theirs = [
        {k: v for k, v in s.items() if k != "__local_path__"} for s in wds.tarfile_to_samples()(iter([{"url": tar}]))
    ]
    assert len(ours) == 30 and ours == theirs
    for bufsize, seed in [(1, 0), (8, 3), (64, 12345)]:
        assert list(shuffle(iter(ours), bufsize, seed)) == list(wds.shuffle(bufsize, bufsize, seed=seed)(iter(theirs)))


def test_the_extras_named_in_messages_exist_and_dev_keeps_everything():
    tomllib = pytest.importorskip("tomllib")
    from gvae_dist.optional import EXTRAS

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {extra for _, extra in EXTRAS.values()} <= set(extras)
    core = " ".join(project["dependencies"])
    for module, (dist, extra) in EXTRAS.items():
        if extra != "dev":
            assert dist.split("[")[0] not in core and any(dist in req for req in extras[extra]), module
    assert "gvae-dist[ray,mlflow,webdataset,dali]" in extras["all"] and "gvae-dist[all]" in extras["dev"]
