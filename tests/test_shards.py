"""Writing shards: format, DALI index, manifest, atomic + resumable builds, the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gvae_dist.cli import main
from gvae_dist.config import DataConfig
from gvae_dist.data import shards as shards_mod
from gvae_dist.data import synthetic
from gvae_dist.data.importers import build_dataset
from gvae_dist.data.shards import read_index, read_manifest, sha256_file, split_member
from gvae_dist.data.synthetic import FACTOR_SPECS, generate, weak_labels


def _data(**kw) -> DataConfig:
    """No eval split unless asked: most tests here count shards of one split."""
    return DataConfig(image_size=32, **{"eval_fraction": 0.0, **kw})


def _members(tar_path):
    with tarfile.open(tar_path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf}


def test_build_writes_tars_indexes_and_manifest(tmp_path):
    d = _data(seed=3, label_bins=4)
    man = build_dataset("faces", tmp_path, d, num=40, shard_size=16, progress=False)
    assert [s["count"] for s in man["shards"]] == [16, 16, 8]
    assert man == read_manifest(tmp_path)
    assert (man["num_samples"], man["image_size"], man["channels"], man["image_format"]) == (40, 32, 3, "png")
    names = [s.name for s in FACTOR_SPECS["faces"]]
    assert [f["name"] for f in man["factors"]] == names == [lab["name"] for lab in man["labels"]]
    assert all(lab["num_classes"] == 4 and len(lab["bin_edges"]) == 5 for lab in man["labels"])
    assert man["generating_config"]["seed"] == 3 and man["generating_config"]["source"] == "faces"
    for rec in man["shards"]:
        assert sha256_file(tmp_path / rec["tar"]) == rec["sha256"]
        assert sha256_file(tmp_path / rec["index"]) == rec["index_sha256"]

    # the data equal the in-memory backend's for the same data.* settings (PNG is lossless)
    ref = generate("faces", 40, seed=3, image_size=32)
    ref_labels = weak_labels(ref.factors, ref.factor_specs, 4, 0.0, 0.0, seed=3 + 7919)
    members = _members(tmp_path / "shard-000001.tar")
    assert sorted(members)[:4] == ["00000016.factors.f32", "00000016.json", "00000016.labels.i64", "00000016.png"]
    for pos in range(16, 32):
        key = f"{pos:08d}"
        img = np.asarray(Image.open(io.BytesIO(members[f"{key}.png"])))
        np.testing.assert_array_equal(img, ref.images[pos])
        np.testing.assert_array_equal(np.frombuffer(members[f"{key}.labels.i64"], "<i8"), ref_labels[pos])
        np.testing.assert_array_equal(np.frombuffer(members[f"{key}.factors.f32"], "<f4"), ref.factors[pos])
        meta = json.loads(members[f"{key}.json"])
        assert meta["key"] == key and list(meta["labels"]) == names
        assert [meta["labels"][n] for n in names] == ref_labels[pos].tolist()


def test_index_matches_dalis_wds2idx(tmp_path):
    wds2idx = pytest.importorskip("wds2idx", reason="the DALI wheel ships wds2idx")
    build_dataset("shapes", tmp_path, _data(), num=10, shard_size=10, progress=False)
    with wds2idx.IndexCreator(str(tmp_path / "shard-000000.tar"), str(tmp_path / "ref.idx"), verbose=False) as creator:
        creator.create_index()
    assert (tmp_path / "ref.idx").read_text() == (tmp_path / "shard-000000.idx").read_text()
    entries = read_index(tmp_path / "shard-000000.idx")
    assert len(entries) == 10 and [c[0] for c in entries[0]] == ["png", "labels.i64", "factors.f32", "json"]


def test_rebuild_skips_complete_shards_and_is_byte_reproducible(tmp_path):
    man = build_dataset("shapes", tmp_path, _data(), num=30, shard_size=10, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*")}
    manifest_mtime = (tmp_path / "manifest.json").stat().st_mtime_ns
    again = build_dataset("shapes", tmp_path, _data(), num=30, shard_size=10, progress=False)
    assert again["built"]["cached"] and again["shards"] == man["shards"]  # verified, not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*")} == mtimes
    assert (tmp_path / "manifest.json").stat().st_mtime_ns == manifest_mtime

    (tmp_path / "shard-000001.tar").unlink()
    with open(tmp_path / "shard-000002.tar", "r+b") as fh:  # a damaged shard is rewritten too
        fh.seek(520)
        fh.write(b"\xff" * 10)
    fixed = build_dataset("shapes", tmp_path, _data(), num=30, shard_size=10, progress=False)
    assert fixed["built"]["skipped_complete_shards"] == 1 and not fixed["built"]["cached"]
    assert [s["sha256"] for s in fixed["shards"]] == [s["sha256"] for s in man["shards"]]

    other = build_dataset("shapes", tmp_path, _data(label_bins=5), num=30, shard_size=10, progress=False)
    assert other["built"]["skipped_complete_shards"] == 0  # another generating config


def test_split_puts_held_out_samples_in_shards_of_their_own(tmp_path):
    man = build_dataset("faces", tmp_path, _data(eval_fraction=0.25), num=28, shard_size=8, progress=False)
    assert man["split"] == {"train": 21, "eval": 7, "eval_fraction": 0.25}
    assert [(s["first"], s["count"], s["split"]) for s in man["shards"]] == [
        (0, 8, "train"),
        (8, 8, "train"),
        (16, 5, "train"),
        (21, 7, "eval"),
    ]
    code = hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:16]
    assert man["generating_config"]["generator_sha256"] == code  # a changed renderer rebuilds
    for rec in man["shards"]:  # each tar holds exactly its split's keys
        keys = {split_member(name)[0] for name in _members(tmp_path / rec["tar"])}
        assert keys == {f"{i:08d}" for i in range(rec["first"], rec["first"] + rec["count"])}
    other = build_dataset("faces", tmp_path, _data(eval_fraction=0.5), num=28, shard_size=8, progress=False)
    assert not other["built"]["cached"] and other["built"]["skipped_complete_shards"] == 0
    assert other["split"]["eval"] == 14
    with pytest.raises(ValueError, match="eval_fraction=0.01 of 28 samples leaves no evaluation sample"):
        build_dataset("faces", tmp_path, _data(eval_fraction=0.01), num=28, progress=False)


def test_interrupted_build_is_not_readable_and_resumes(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = shards_mod.encode_image

    def crash_in_second_shard(image, fmt):
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt("simulated crash")
        return real(image, fmt)

    monkeypatch.setattr(shards_mod, "encode_image", crash_in_second_shard)
    with pytest.raises(KeyboardInterrupt):
        build_dataset("shapes", tmp_path, _data(), num=30, shard_size=10, progress=False)
    assert (tmp_path / "shard-000000.tar").is_file()
    assert not (tmp_path / "shard-000001.tar").exists()  # only a hidden temporary file
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(ValueError, match="build is incomplete"):
        read_manifest(tmp_path)

    monkeypatch.setattr(shards_mod, "encode_image", real)
    man = build_dataset("shapes", tmp_path, _data(), num=30, shard_size=10, progress=False)
    assert man["built"]["skipped_complete_shards"] == 1
    assert not list(tmp_path.glob(".shard-*"))


def test_parallel_build_equals_serial(tmp_path):
    serial = build_dataset("faces", tmp_path / "a", _data(), num=24, shard_size=6, workers=1, progress=False)
    parallel = build_dataset("faces", tmp_path / "b", _data(), num=24, shard_size=6, workers=2, progress=False)
    assert [s["sha256"] for s in serial["shards"]] == [s["sha256"] for s in parallel["shards"]]


def test_jpeg_shards(tmp_path):
    man = build_dataset("faces", tmp_path, _data(), num=8, shard_size=8, image_format="jpg", progress=False)
    members = _members(tmp_path / "shard-000000.tar")
    assert man["image_format"] == "jpg" and "00000000.jpg" in members
    img = np.asarray(Image.open(io.BytesIO(members["00000000.jpg"])))
    ref = generate("faces", 1, seed=0, image_size=32).images[0]
    assert img.shape == ref.shape and np.abs(img.astype(int) - ref).mean() < 6  # lossy but close


def test_cli_data_build_and_verify(tmp_path, capsys):
    out = tmp_path / "shards"
    rc = main(
        [
            "data",
            "build",
            "--source",
            "shapes",
            "--out",
            str(out),
            "--num",
            "12",
            "--shard-size",
            "5",
            "--workers",
            "1",
            "--format",
            "jpg",
            "--set",
            "data.image_size=32",
            "--set",
            "data.label_bins=6",
        ]
    )
    assert rc == 0
    man = read_manifest(out)
    assert man["num_samples"] == 12 and len(man["shards"]) == 3 and man["image_format"] == "jpg"
    assert man["generating_config"]["label_bins"] == 6 and man["channels"] == 1
    assert main(["data", "verify", str(out), "--full"]) == 0
    assert "12 of 12 samples readable" in capsys.readouterr().out
    (out / "shard-000001.tar").unlink()
    assert main(["data", "verify", str(out)]) == 1
    assert "shard-000001.tar" in capsys.readouterr().out
    assert main(["data", "build", "--source", "dsprites", "--out", str(tmp_path / "x")]) == 2  # no --input
