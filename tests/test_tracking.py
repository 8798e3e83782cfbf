"""MLflow tracking of the plain train loop: the embedded SQLite store, what a run records, the
logged model, image grids, and training through a dead tracking server."""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest
import torch

from gvae_dist.config import load_config
from gvae_dist.launch import free_port
from gvae_dist.model import GatedVAE
from gvae_dist.plots import image_grids
from gvae_dist.tracking import open_run
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


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_image_grids_tile_inputs_reconstructions_and_traversals():
    model = GatedVAE(3, 32, 10, (8, 8, 16), 32)
    grids = image_grids(model, torch.rand(4, 3, 32, 32), steps=5)
    assert grids["reconstruction"].shape == (2 * 33 + 1, 4 * 33 + 1, 3)
    assert grids["traversal"].shape == (10 * 33 + 1, 5 * 33 + 1, 3)
    assert all(g.dtype == np.uint8 for g in grids.values())
    assert model.training  # restored


def test_open_run_reuses_the_tagged_run_only_when_asked(tmp_path):
    cfg = load_config(None, [*TINY, f"run.output_dir={tmp_path}"])
    first = open_run(cfg, "key-a", reuse=True)  # nothing tagged yet: creates
    assert open_run(cfg, "key-a", reuse=True) == first
    assert open_run(cfg, "key-a", reuse=False) != first
    assert open_run(cfg, "key-b", reuse=True) not in (None, first)


@pytest.mark.slow
def test_embedded_store_records_the_run_inside_the_output_dir(tmp_path, monkeypatch):
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = train_loop(load_config(None, [*TINY, f"run.output_dir={out}", "tracking.image_every=5"]))
    # logging the model points MLflow's fluent API at the store, but exports nothing a later run
    # in this process would take as its default store
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert list(cwd.iterdir()) == []  # no ./mlruns, nothing else
    assert sorted(p.name for p in out.iterdir()) == ["gvae", "mlartifacts", "mlflow.db"]

    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.get_run(result.tracking_run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith((out / "mlartifacts").as_uri())
    assert run.data.params["objective.name"] == "beta" and run.data.params["partitions.0.name"] == "pose"
    for key in (
        "loss",
        "recon",
        "kl",
        "recon/identity",
        "recon/shared_factor",
        "kl/pose",
        "kl/rest",
        "kl_dim/00",
        "kl_dim/09",
        "perf/images_per_s",
        "perf/data_wait_fraction",
        "gate/open_fraction",
        "pairing/found",
    ):
        assert f"train/{key}" in run.data.metrics, key
    assert "step" not in run.data.metrics and "train/step" not in run.data.metrics  # MLflow's own axis
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert images == {f"images/{kind}_step_{s:08d}.png" for kind in ("reconstruction", "traversal") for s in (5, 10)}
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # the final model: a pyfunc of the encoder mean (a torch.export program), codes per partition,
    # with a signature (tests/test_encode.py: the same codes as `gvae-dist encode`, served)
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == run.info.run_id and model.name == "encoder"
    assert client.search_registered_models() == []  # tracking.registry_name unset: nothing registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored afterwards: set_tracking_uri exports it
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    codes = pyfunc.predict(np.random.rand(5, 3, 32, 32).astype(np.float32))
    assert codes.shape == (5, 10) and list(codes.columns)[::4] == ["pose_0", "expression_0", "rest_0"]


def test_dead_tracking_server_warns_once_and_training_finishes(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_loop(load_config(None, [*TINY, f"run.output_dir={tmp_path}", f"tracking.uri={dead}"]))
    ours = [w for w in caught if "MLflow" in str(w.message)]
    assert len(ours) == 1 and "training continues" in str(ours[0].message)
    assert result.step == 10 and result.tracking_run_id is None and result.checkpoint is not None
    assert time.monotonic() - t0 < 60
