"""The trained model in use: `gvae-dist encode` on a real tiny run's checkpoint, and the pyfunc
model that run logged to MLflow (loaded, and served by `mlflow models serve`), giving the same
codes per named partition."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gvae_dist.cli import main
from gvae_dist.config import load_config
from gvae_dist.launch import free_port
from gvae_dist.train import train_loop

VENV_BIN = Path(sys.executable).parent

TINY = [
    "data.num_train=256",
    "data.num_eval=64",
    "data.image_size=32",
    "optim.batch_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "eval.points=0",
    "eval.num_train=40",
    "eval.num_test=24",
    "run.threads=1",
    "optim.steps=10",
    "run.log_every=5",
    "run.checkpoint_every=10",
    "optim.lr=0.005",
    "tracking.registry_name=gvae-encoder",
]
PARTS = {"pose": 4, "expression": 4, "rest": 2}  # the default partitions (TINY keeps them)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real tiny training run (evaluated at the end, its encoder registered), tracked in its own
    SQLite store, and 6 images (uint8 NHWC)."""
    out = tmp_path_factory.mktemp("encode")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    result = train_loop(load_config(None, [*TINY, f"run.output_dir={out}", f"tracking.uri={uri}"]))
    images = (np.random.default_rng(0).random((6, 32, 32, 3)) * 255).round().astype(np.uint8)
    np.savez(out / "images.npz", images=images)
    return result, uri, images, out


def _encode(capsys, *args) -> tuple[int, str, str]:
    rc = main(["encode", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_encode_writes_codes_per_partition_from_npz_or_png_folder(run, capsys):
    result, _, images, out = run
    rc, stdout, _ = _encode(
        capsys, "--checkpoint", result.run_dir, "--images", out / "images.npz", "--out", out / "codes.npz"
    )
    assert rc == 0
    ckpt = result.run_dir / "checkpoints" / "step_00000010"
    assert f"encoded 6 images from {out / 'images.npz'} with {ckpt} (posterior means)" in stdout
    for line, (name, dims) in zip(
        stdout.splitlines()[1:4], [("pose", "0-3 (4)"), ("expression", "4-7 (4)"), ("rest", "8-9 (2)")]
    ):
        assert line.split()[:3] == [name, "dims", dims.split()[0]] and "KL " in line
    codes = np.load(out / "codes.npz")
    assert sorted(codes.files) == sorted([*PARTS, "mu", "logvar", "names"])
    assert {k: codes[k].shape for k in PARTS} == {k: (6, n) for k, n in PARTS.items()}
    np.testing.assert_array_equal(np.concatenate([codes[k] for k in PARTS], axis=1), codes["mu"])
    assert codes["mu"].std(0).max() > 0  # different images, different codes

    # the same images as a folder of PNGs, and as floats in [0, 1]: the same codes
    folder = out / "pngs"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    np.savez(out / "float.npz", images=images.astype(np.float32) / 255)
    for src in (folder, out / "float.npz"):
        rc, stdout, _ = _encode(capsys, "--checkpoint", ckpt, "--images", src, "--json")
        assert rc == 0
        printed = json.loads(stdout)
        assert [p["name"] for p in printed["partitions"]] == list(PARTS)
        for name in PARTS:
            np.testing.assert_allclose(printed["codes"][name], codes[name], rtol=0, atol=1e-6)
    assert printed["names"] == [f"images[{i}]" for i in range(6)]


def test_encode_refuses_images_the_model_cannot_read(run, capsys):
    result, _, _, out = run
    np.savez(out / "big.npz", images=np.zeros((2, 64, 64, 3), np.uint8))
    np.savez(out / "grey.npz", images=np.zeros((2, 32, 32), np.uint8))
    np.savez(out / "wrongkey.npz", imgs=np.zeros((2, 32, 32, 3), np.uint8))
    np.savez(out / "z.npz", images=np.full((2, 32, 32, 3), -0.5, np.float32))
    cases = {
        "big.npz": f"{out / 'big.npz'}: images are 64x64 with 3 channel(s), the model expects [N, 32, 32, 3]",
        "grey.npz": f"{out / 'grey.npz'}: images are 32x32 with 1 channel(s), the model expects [N, 32, 32, 3]",
        "wrongkey.npz": f"{out / 'wrongkey.npz'}: no 'images' array (found imgs)",
        "z.npz": f"{out / 'z.npz'}: float pixels must lie in [0, 1] or [0, 255]",
    }
    for file, message in cases.items():
        rc, _, err = _encode(capsys, "--checkpoint", result.run_dir, "--images", out / file)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    missing = result.run_dir / "checkpoints" / "step_00000003"
    rc, _, err = _encode(capsys, "--checkpoint", missing, "--images", out / "images.npz")
    assert rc == 2 and f"{missing} does not exist; checkpoints under" in err and "step_00000010" in err


def _mlflow_codes(run) -> np.ndarray:
    """``gvae-dist encode``'s codes of the fixture images, columns in partition order."""
    result, _, _, out = run
    if not (out / "codes.npz").exists():
        main(
            [
                "encode",
                "--checkpoint",
                str(result.run_dir),
                "--images",
                str(out / "images.npz"),
                "--out",
                str(out / "codes.npz"),
            ]
        )
    return np.load(out / "codes.npz")


def test_logged_and_registered_pyfunc_give_the_codes_of_gvae_dist_encode(run, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    result, uri, images, _ = run
    codes = _mlflow_codes(run)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored afterwards: set_tracking_uri exports it
    mlflow.set_tracking_uri(uri)
    (version,) = MlflowClient(uri).search_model_versions("name = 'gvae-encoder'")
    assert int(version.version) == 1 and version.run_id == result.tracking_run_id
    assert float(version.tags["eval/dci_mean"]) == pytest.approx(result.eval_metrics["dci_mean"])
    assert version.tags["gvae_dist.step"] == "10" and "eval/purity/pose" in version.tags
    for uri_ in (f"runs:/{result.tracking_run_id}/encoder", "models:/gvae-encoder/1"):
        model = mlflow.pyfunc.load_model(uri_)
        assert model.metadata.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 32, 32)
        frame = model.predict(np.moveaxis(images, -1, 1).astype(np.float32) / 255)
        assert list(frame.columns) == [f"{k}_{i}" for k, n in PARTS.items() for i in range(n)]
        for name, n in PARTS.items():
            np.testing.assert_allclose(
                frame[[f"{name}_{i}" for i in range(n)]].to_numpy(), codes[name], rtol=0, atol=1e-5
            )


def test_mlflow_models_serve_answers_with_partition_codes(run, tmp_path):
    result, uri, images, _ = run
    codes = _mlflow_codes(run)
    port = free_port()
    # the server runs `uvicorn` from PATH: the venv's bin, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        f"runs:/{result.tracking_run_id}/encoder",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(0.5)
        body = json.dumps({"inputs": (np.moveaxis(images, -1, 1).astype(np.float32) / 255).tolist()}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        rows = json.loads(urllib.request.urlopen(req, timeout=30).read())["predictions"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server's own group: mlflow + uvicorn
            server.wait(timeout=20)
        log.close()
    assert len(rows) == 6
    for name, n in PARTS.items():
        got = np.array([[row[f"{name}_{i}"] for i in range(n)] for row in rows])
        np.testing.assert_allclose(got, codes[name], rtol=0, atol=1e-5)
