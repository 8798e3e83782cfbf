"""Static checks of cluster/: the Ray cluster launcher YAML against the installed Ray's schema,
the SLURM scripts' preemption and security settings, and shellcheck on every shell script."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RAY_CONFIGS = sorted((REPO / "cluster/ray").glob("*.yaml"))
SBATCH = sorted((REPO / "cluster/slurm").glob("*.sbatch"))
SHELL_SCRIPTS = sorted(
    [*SBATCH, *(REPO / "cluster").rglob("*.sh"), *(REPO / "ops").glob("*.sh"), *(REPO / ".ci").glob("*")]
)


def test_there_is_something_to_check():
    assert RAY_CONFIGS and {p.name for p in SBATCH} >= {"ray.sbatch", "torchrun.sbatch"}


@pytest.mark.parametrize("path", RAY_CONFIGS, ids=lambda p: p.name)
def test_ray_cluster_config_matches_ray_schema(path):
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    validate_config(prepare_config(raw))  # jsonschema of this Ray version + launcher rules

    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    workers = {k: v for k, v in types.items() if k != raw["head_node_type"]}
    gpu_types = [v for v in workers.values() if v.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types, "expected a GPU worker node type"
    assert all(v["max_workers"] <= raw["max_workers"] for v in workers.values())
    assert head["resources"].get("CPU", 1) == 0, "the head should not host training workers"
    for node in types.values():
        assert node["node_config"]["InstanceType"] and node["node_config"]["ImageId"]
    # Ray on the nodes is the version the project is tested with
    setup = " ".join(raw["setup_commands"])
    assert f"ray[default,train,tune]=={ray.__version__}" in setup
    # token auth everywhere, dashboard on loopback, nothing bound to all interfaces
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in raw[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert "--dashboard-host=127.0.0.1" in " ".join(raw["head_start_ray_commands"])
    assert "0.0.0.0" not in _code(path)
    assert "~/.ray/auth_token" in raw["file_mounts"].values()


def _code(path: Path) -> str:
    """The file without its comment lines."""
    return "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))


def _sbatch_options(path: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^#SBATCH\s+(\S+)", path.read_text(), re.M)]


@pytest.mark.parametrize("path", SBATCH, ids=lambda p: p.name)
def test_sbatch_scripts_ask_for_warning_signal_and_requeue(path):
    opts = _sbatch_options(path)
    assert any(re.fullmatch(r"--signal=B:USR1@\d+", o) for o in opts), opts
    assert "--requeue" in opts and "--open-mode=append" in opts
    text = path.read_text()
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "SLURM_RESTART_COUNT" in text  # bounded requeues
    assert "0.0.0.0" not in _code(path)


def test_ray_sbatch_uses_a_private_token_and_loopback_dashboard():
    text = (REPO / "cluster/slurm/ray.sbatch").read_text()
    assert "RAY_AUTH_MODE=token" in text and 'chmod 600 "$TOKEN_FILE"' in text and "umask 077" in text
    assert "--dashboard-host=127.0.0.1" in text
    assert "--block" in text and "trap teardown EXIT" in text
    # Ray's docs template passes an empty --num-gpus when no GPUs were requested
    assert '[ -n "$GPUS" ] || GPUS=0' in text


@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_pass_shellcheck(path):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (ops/services.sh installs it)")
    res = subprocess.run(["shellcheck", "--shell=bash", "--severity=info", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
