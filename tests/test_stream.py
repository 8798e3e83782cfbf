"""Shard loaders: the Batch contract, equal pixels, epochs across ranks, resume, training on shards.

Both backends run for real: DALI CPU pipelines (``device_id=None``) and WebDataset + PIL in
DataLoader workers.
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gvae_dist.config import DataConfig, load_config
from gvae_dist.data.importers import build_dataset
from gvae_dist.data.loader import build_train_loader, load_eval_arrays
from gvae_dist.data.stream import build_stream_loader, choose_backend
from gvae_dist.data.stream_base import epoch_layout, train_time_flip
from gvae_dist.data.synthetic import generate, weak_labels

pytest.importorskip("nvidia.dali", reason="the DALI backend needs nvidia-dali (a project dependency)")
BACKENDS = ["dali", "webdataset"]
N = 50


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory):
    """N samples, all in the train split (the loader tests count on N)."""
    out = tmp_path_factory.mktemp("png")
    build_dataset("faces", out, DataConfig(image_size=32, eval_fraction=0.0), num=N, shard_size=16, progress=False)
    return out


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    """N samples: 40 train (shards of 16, 16, 8), 10 held out for evaluation (one shard)."""
    out = tmp_path_factory.mktemp("split")
    man = build_dataset("faces", out, DataConfig(image_size=32), num=N, shard_size=16, progress=False)
    assert man["split"] == {"train": 40, "eval": 10, "eval_fraction": 0.2}
    assert [(s["count"], s["split"]) for s in man["shards"]] == [
        (16, "train"),
        (16, "train"),
        (8, "train"),
        (10, "eval"),
    ]
    return out


def _cfg(path, backend, *extra):
    return load_config(
        None,
        [
            "data.source=shards",
            f"data.path={path}",
            f"data.backend={backend}",
            "data.image_size=32",
            "data.num_workers=0",
            *extra,
        ],
    )


def _loader(path, backend, rank=0, world=1, batch=8, *extra):
    return build_stream_loader(_cfg(path, backend, *extra), rank, world, torch.device("cpu"), batch)


def _by_key(loader, batches):
    out = {}
    for _ in range(batches):
        b = next(loader)
        for i, k in enumerate(b.keys):
            out[k] = (b.image[i], b.labels[i], b.factors[i])
    return out


def test_label_flip_prob_at_train_time_flips_the_labels_read(png_dir):
    """Shards built without noise + data.label_flip_prob=0.6 at train time: 0.6 x (1 - 1/3) of the
    labels change, the same ones in both backends and in every epoch, and another data.seed
    flips others; a value below the build's noise is refused."""
    clean = _by_key(_loader(png_dir, "webdataset"), 7)
    noisy = {b: _by_key(_loader(png_dir, b, 0, 1, 8, "data.label_flip_prob=0.6"), 14) for b in BACKENDS}
    other = _by_key(_loader(png_dir, "webdataset", 0, 1, 8, "data.label_flip_prob=0.6", "data.seed=1"), 7)
    keys = sorted(clean)
    assert sorted(noisy["dali"]) == sorted(noisy["webdataset"]) == keys
    lab = {b: torch.stack([noisy[b][k][1] for k in keys]) for b in BACKENDS}
    ref = torch.stack([clean[k][1] for k in keys])
    assert torch.equal(lab["dali"], lab["webdataset"])
    assert 0 <= int(lab["dali"].min()) and int(lab["dali"].max()) <= 2  # 3 bins per factor
    changed = (lab["dali"] != ref).float().mean().item()
    assert 0.3 < changed < 0.5, changed  # 0.4 expected over 450 labels
    assert not torch.equal(torch.stack([other[k][1] for k in keys]), lab["webdataset"])
    assert train_time_flip({"generating_config": {"label_flip_prob": 0.2}}, 0.2, "x") == 0.0
    assert train_time_flip({"generating_config": {"label_flip_prob": 0.2}}, 0.5, "x") == pytest.approx(0.375)
    with pytest.raises(
        ValueError,
        match=r"data.label_flip_prob=0.1, but the shards at x were built with "
        r"label_flip_prob=0.2 .*cannot be taken out",
    ):
        train_time_flip({"generating_config": {"label_flip_prob": 0.2}}, 0.1, "x")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_contract(png_dir, backend):
    loader = _loader(png_dir, backend)
    b = next(loader)
    assert b.image.shape == (8, 3, 32, 32) and b.image.dtype == torch.float32
    assert 0.0 <= float(b.image.min()) and float(b.image.max()) <= 1.0
    assert b.labels.shape == (8, 9) and b.labels.dtype == torch.int64
    assert b.factors.shape == (8, 9) and b.factors.dtype == torch.float32
    assert len(b.keys) == 8 and all(isinstance(k, str) for k in b.keys)
    info = loader.info
    assert (info.channels, info.image_size, info.num_samples) == (3, 32, N)
    assert info.label_names[:3] == ["yaw", "pitch", "roll"] and info.factor_discrete == [False] * 9
    assert info.extra["epoch"]["batches_per_rank"] == 7 and loader.skipped == 0


def test_png_pixels_labels_and_factors_identical_between_backends(png_dir):
    dali = _by_key(_loader(png_dir, "dali"), 7)
    wds = _by_key(_loader(png_dir, "webdataset"), 7)
    assert sorted(dali) == sorted(wds) == [f"{i:08d}" for i in range(N)]
    ref = generate("faces", N, seed=0, image_size=32)
    ref_labels = weak_labels(ref.factors, ref.factor_specs, 3, seed=7919)
    for key in dali:
        (xd, ld, fd), (xw, lw, fw) = dali[key], wds[key]
        torch.testing.assert_close(xd, xw, rtol=0, atol=1e-6)
        truth = torch.from_numpy(ref.images[int(key)]).permute(2, 0, 1)
        assert torch.equal((xd * 255).round().to(torch.uint8), truth)
        assert torch.equal(ld, lw) and torch.equal(ld, torch.from_numpy(ref_labels[int(key)]))
        assert torch.equal(fd, fw) and torch.equal(fd, torch.from_numpy(ref.factors[int(key)]))


def test_jpeg_backends_agree_closely(tmp_path):
    build_dataset(
        "faces", tmp_path, DataConfig(image_size=32), num=16, shard_size=16, image_format="jpg", progress=False
    )
    dali = _by_key(_loader(tmp_path, "dali"), 2)
    wds = _by_key(_loader(tmp_path, "webdataset"), 2)
    diff = torch.stack([(dali[k][0] - wds[k][0]).abs().mean() for k in dali])
    assert float(diff.max()) < 2 / 255  # lossy decoders may round differently


@pytest.mark.parametrize(
    "backend, workers, world, batch",
    [
        ("dali", 2, 2, 8),
        ("dali", 1, 3, 8),
        ("webdataset", 0, 2, 8),
        ("webdataset", 2, 2, 8),
        ("webdataset", 2, 3, 16),
    ],
)
def test_one_epoch_over_ranks_sees_every_sample_once_plus_reported_padding(png_dir, backend, workers, world, batch):
    loaders = [_loader(png_dir, backend, r, world, batch, f"data.num_workers={workers}") for r in range(world)]
    layout = epoch_layout(N, world, batch)
    assert loaders[0].info.extra["epoch"] == layout
    for epoch in range(2):  # the second epoch rotates the slices; still exactly once
        keys = []
        for loader in loaders:
            for _ in range(layout["batches_per_rank"]):
                b = next(loader)
                assert len(b.keys) == batch
                keys += b.keys
            assert loader.state_dict()["epoch"] == epoch + 1 and loader.state_dict()["batch"] == 0
        counts = collections.Counter(keys)
        assert sorted(counts) == [f"{i:08d}" for i in range(N)], epoch
        assert len(keys) == layout["yielded"] and sum(c - 1 for c in counts.values()) == layout["padded"]


@pytest.mark.parametrize("backend, workers", [("dali", 1), ("webdataset", 0), ("webdataset", 2)])
def test_resume_continues_the_same_sample_order(png_dir, backend, workers):
    extra = f"data.num_workers={workers}"
    reference = _keys(_loader(png_dir, backend, 0, 2, 8, extra), 11)
    for k in (1, 2, 3, 5, 8):  # inside the first epoch, in its padded tail, in the next epochs
        first = _loader(png_dir, backend, 0, 2, 8, extra)
        assert _keys(first, k) == reference[:k]
        state = first.state_dict()
        resumed = _loader(png_dir, backend, 0, 2, 8, extra)
        resumed.load_state_dict(state)
        assert _keys(resumed, 11 - k) == reference[k:], k


def _keys(loader, n):
    return [next(loader).keys for _ in range(n)]


def test_resize_in_the_pipeline(tmp_path):
    build_dataset("shapes", tmp_path, DataConfig(image_size=64), num=8, shard_size=8, progress=False)
    shapes = "partitions=[{name: object, size: 4, factors: [shape, scale]}, {name: rest, size: 6}]"
    dali = _by_key(_loader(tmp_path, "dali", 0, 1, 8, "data.image_size=32", shapes), 1)
    wds = _by_key(_loader(tmp_path, "webdataset", 0, 1, 8, "data.image_size=32", shapes), 1)
    for key in dali:
        assert dali[key][0].shape == wds[key][0].shape == (1, 32, 32)
        assert float((dali[key][0] - wds[key][0]).abs().mean()) < 0.03  # two resize kernels


def test_eval_arrays_come_from_the_eval_shards(split_dir):
    images, factors, info = load_eval_arrays(_cfg(split_dir, "auto"), limit=20)
    ref = generate("faces", N, seed=0, image_size=32)
    np.testing.assert_array_equal(images, ref.images[40:])
    np.testing.assert_array_equal(factors, ref.factors[40:])
    assert info.num_samples == 10 and info.factor_names[0] == "yaw" and info.extra["split"] == "eval"
    assert info.extra["keys"] == [f"{i:08d}" for i in range(40, N)]


@pytest.mark.parametrize("backend, workers", [("dali", 1), ("webdataset", 2)])
def test_evaluation_never_reads_a_training_sample(split_dir, backend, workers):
    """Two epochs of every rank's training batches vs. everything evaluation reads: disjoint keys
    and disjoint factor rows, and together every sample of the set."""
    world, batch = 2, 8
    loaders = [_loader(split_dir, backend, r, world, batch, f"data.num_workers={workers}") for r in range(world)]
    train_keys, train_factors = set(), set()
    for loader in loaders:
        assert loader.info.extra["split"] == "train" and loader.info.num_samples == 40
        for _ in range(2 * loader.layout["batches_per_rank"]):
            b = next(loader)
            train_keys.update(b.keys)
            train_factors.update(tuple(row) for row in b.factors.tolist())
    _, factors, info = load_eval_arrays(_cfg(split_dir, backend), limit=None)
    eval_keys = set(info.extra["keys"])
    assert train_keys == {f"{i:08d}" for i in range(40)} and len(eval_keys) == 10
    assert not train_keys & eval_keys
    assert not train_factors & {tuple(row) for row in factors.tolist()}


def test_eval_split_errors_and_eval_path(split_dir, png_dir, tmp_path):
    cfg = _cfg(png_dir, "auto")  # built with data.eval_fraction=0: no eval shards
    with pytest.raises(ValueError, match="lists no eval shards .*data.eval_fraction=0"):
        load_eval_arrays(cfg)
    # a manifest from before splits: training falls back to all shards, evaluation refuses
    old = tmp_path / "old"
    shutil.copytree(split_dir, old)
    man = json.loads((old / "manifest.json").read_text())
    for rec in man["shards"]:
        del rec["split"]
    (old / "manifest.json").write_text(json.dumps(man))
    assert _loader(old, "webdataset").info.num_samples == N
    with pytest.raises(ValueError, match="has no train/eval split .*data.eval_path"):
        load_eval_arrays(_cfg(old, "auto"))
    # data.eval_path: another set, read whole; never the training set itself or one that overlaps it
    with pytest.raises(ValueError, match="samples overlap"):
        load_eval_arrays(_cfg(old, "auto", f"data.eval_path={split_dir}"))
    with pytest.raises(ValueError, match="is data.path"):
        load_eval_arrays(_cfg(split_dir, "auto", f"data.eval_path={split_dir}"))
    other = tmp_path / "other"
    build_dataset(
        "faces", other, DataConfig(image_size=32, seed=1, eval_fraction=0.0), num=12, shard_size=16, progress=False
    )
    images, _, info = load_eval_arrays(_cfg(old, "auto", f"data.eval_path={other}"))
    assert len(images) == 12 and info.extra["keys"] == [f"{i:08d}" for i in range(12)]
    assert info.extra["path"] == str(other)


def test_backend_choice(png_dir, monkeypatch):
    assert choose_backend(_cfg(png_dir, "auto")) == "dali"
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if DALI were not installed
    assert choose_backend(_cfg(png_dir, "auto")) == "webdataset"
    loader = build_train_loader(_cfg(png_dir, "auto"), 0, 1, "cpu", batch_size=4)
    assert loader.backend == "webdataset" and next(loader).image.shape == (4, 3, 32, 32)
    with pytest.raises(ImportError, match="data.backend=webdataset"):
        choose_backend(_cfg(png_dir, "dali"))
    with pytest.raises(ValueError, match="data.source=shards"):
        build_train_loader(load_config(None, ["data.backend=webdataset"]), 0, 1, "cpu", 4)


TINY = [
    "data.image_size=32",
    "optim.batch_size=16",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "run.log_every=5",
    "eval.at_end=false",
    "tracking.enabled=false",
    "run.threads=1",
    "optim.steps=5",
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_loop_runs_on_shards(png_dir, tmp_path, backend):
    from gvae_dist.checkpoint import load_checkpoint
    from gvae_dist.train import train_loop

    cfg = load_config(
        None,
        [
            *TINY,
            "data.source=shards",
            f"data.path={png_dir}",
            f"data.backend={backend}",
            "data.num_workers=1",
            f"run.output_dir={tmp_path}",
            "data.record_reads=true",
        ],
    )
    result = train_loop(cfg)
    assert result.step == 5 and np.isfinite(result.metrics["loss"])
    read = json.loads((result.run_dir / "data" / "rank-0.json").read_text())
    assert (read["backend"], read["split"], read["samples"]) == (backend, "train", N)
    counts = collections.Counter(read["first_epoch_keys"])  # 4 batches of 16: N keys + 14 repeats
    assert sorted(counts) == [f"{i:08d}" for i in range(N)] and sum(counts.values()) == 64
    assert result.metrics["data/skipped_samples"] == 0.0
    assert load_checkpoint(result.checkpoint)["data"][0]["backend"] == backend  # the data position


@pytest.mark.slow
def test_benchmark_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    script = Path(__file__).resolve().parents[1] / "ops" / "bench" / "data_throughput.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {r["format"] for r in report["loaders"]} == {"png", "jpg"}
    for row in report["loaders"]:
        assert row["dali_img_s"] > 0 and row["webdataset_img_s"] > 0
        assert row["ratio"] == pytest.approx(row["dali_img_s"] / row["webdataset_img_s"], rel=1e-3)
    assert report["train_step"]["img_s"] > 0 and report["bottleneck"] in ("data", "compute")
    assert "ratio" in proc.stdout
