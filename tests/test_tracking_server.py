"""``ops/mlflow_server.sh`` on loopback: a run trained against it arrives, checked through the
server's REST API (params, metrics, proxied artifacts)."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from gvae_dist.config import load_config
from gvae_dist.train import train_loop

TINY = [
    "data.num_train=512",
    "data.num_eval=400",
    "data.image_size=32",
    "optim.batch_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "eval.at_end=false",
    "run.threads=1",
    "optim.steps=10",
    "run.log_every=5",
    "run.checkpoint_every=10",
]


def _get(url: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=30) as resp:
        return json.load(resp)


@pytest.mark.integration
@pytest.mark.slow
def test_run_logged_to_the_server_arrives(mlflow_server, tmp_path):
    url = mlflow_server.url
    assert url.startswith("http://127.0.0.1:")
    result = train_loop(
        load_config(
            None, [*TINY, f"run.output_dir={tmp_path}", f"tracking.uri={url}", "tracking.experiment=server-test"]
        )
    )
    run_id = result.tracking_run_id
    assert run_id is not None
    run = _get(url, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["optim.batch_size"] == "32" and params["model.hidden"] == "32"
    history = _get(url, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="train/loss")
    assert [m["step"] for m in history["metrics"]] == [5, 10]
    keys = {m["key"] for m in run["data"]["metrics"]}
    assert keys >= {"train/kl_dim/00", "train/perf/images_per_s", "train/recon/identity"}
    files = {f["path"] for f in _get(url, "/api/2.0/mlflow/artifacts/list", run_id=run_id)["files"]}
    assert {"config.yaml", "images", "metrics.json"} <= files
    # artifacts are proxied into the server's artifact root; the client wrote no local store
    stored = {p.name for p in (mlflow_server.root / "artifacts").rglob("*") if p.is_file()}
    assert {"config.yaml", "traversal_step_00000010.png"} <= stored
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gvae"]
