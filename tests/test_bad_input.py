"""Deliberately damaged shards fed to both backends: a clear error naming shard and key, or,
with data.on_bad_sample=skip, the bad samples left out and counted (up to the training metrics)."""

from __future__ import annotations

import collections
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from gvae_dist.config import DataConfig, load_config
from gvae_dist.data.importers import build_dataset
from gvae_dist.data.stream import build_stream_loader

pytest.importorskip("nvidia.dali", reason="the DALI backend needs nvidia-dali (a project dependency)")
BACKENDS = ["dali", "webdataset"]
N, BAD = 50, "00000020"  # shard-000001.tar holds keys 16..31


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    # all N in the train split: these tests count on N samples in shards of 16, 16, 16, 2
    build_dataset("faces", out, DataConfig(image_size=32, eval_fraction=0.0), num=N, shard_size=16, progress=False)
    return out


@pytest.fixture
def shards(clean, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(clean, out)
    return out


def _loader(path, backend, mode, *extra):
    cfg = load_config(
        None,
        [
            "data.source=shards",
            f"data.path={path}",
            f"data.backend={backend}",
            "data.image_size=32",
            "data.num_workers=0",
            f"data.on_bad_sample={mode}",
            *extra,
        ],
    )
    return build_stream_loader(cfg, 0, 1, torch.device("cpu"), 8)


def _rewrite(tar, edit):
    """Rewrite a tar member by member; ``edit(name, data)`` returns the members to write instead."""
    with tarfile.open(tar) as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf]
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            for new_name, new_data in edit(name, data):
                info = tarfile.TarInfo(new_name)
                info.size = len(new_data)
                tf.addfile(info, io.BytesIO(new_data))


def _replace(member, payload):
    return lambda name, data: [(name, payload if name == member else data)]


def _png(size):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _epoch_keys(loader):
    keys = []
    for _ in range(loader.layout["batches_per_rank"]):
        keys += next(loader).keys
    return collections.Counter(keys)


SAMPLE_DAMAGE = {
    "corrupt_image": (_replace(f"{BAD}.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20), "do not decode"),
    "missing_component": (lambda n, d: [] if n == f"{BAD}.labels.i64" else [(n, d)], "missing component"),
    "malformed_json": (_replace(f"{BAD}.json", b'{"labels": {"yaw": 1,'), "malformed .json"),
    "wrong_image_size": (_replace(f"{BAD}.png", _png(16)), "16x16, the manifest says 32x32"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(SAMPLE_DAMAGE))
def test_damaged_sample(shards, backend, case):
    edit, message = SAMPLE_DAMAGE[case]
    _rewrite(shards / "shard-000001.tar", edit)
    with pytest.raises(ValueError, match=rf"shard-000001.tar: key {BAD}: .*{message}"):
        _loader(shards, backend, "error")
    loader = _loader(shards, backend, "skip")
    assert loader.skipped == 1 and loader.info.extra["skipped"] == 1
    counts = _epoch_keys(loader)
    assert BAD not in counts and len(counts) == N - 1  # every other sample, once (+ padding)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_tar(shards, backend):
    tar = shards / "shard-000001.tar"
    with tarfile.open(tar) as tf:  # cut inside an image, wherever the encoder put it
        image = next(m for m in tf if m.name == "00000024.png")
    tar.write_bytes(tar.read_bytes()[: image.offset_data + image.size // 2])
    with pytest.raises(ValueError, match=r"shard-000001.tar: key \d+: cut off by a truncated tar"):
        _loader(shards, backend, "error")
    loader = _loader(shards, backend, "skip")
    counts = _epoch_keys(loader)
    assert loader.skipped == N - len(counts) > 0
    assert all(f"{i:08d}" in counts for i in list(range(16)) + list(range(32, N)))


def test_empty_shard_list(shards):
    man = json.loads((shards / "manifest.json").read_text())
    man["shards"], man["num_samples"] = [], 0
    (shards / "manifest.json").write_text(json.dumps(man))
    for backend in BACKENDS:
        for mode in ("error", "skip"):
            with pytest.raises(ValueError, match="shard list is empty"):
                _loader(shards, backend, mode)


def _edit_manifest(path, change):
    man = json.loads((path / "manifest.json").read_text())
    change(man)
    (path / "manifest.json").write_text(json.dumps(man))


def _count_plus_one(man):
    man["shards"][1]["count"] += 1
    man["num_samples"] += 1


MISMATCH = {
    "count": (_count_plus_one, "shard-000001.tar: holds 16 samples, manifest.json lists 17", 1, N),
    "missing_tar": (lambda man: None, "shard-000001.tar: listed in manifest.json .* but missing", 16, N - 16),
    # a copy of shard 0 holds keys 0..15, not the 32..47 listed for shard 2: none of it is read
    # (it used to be, in skip mode: samples 0..15 twice per epoch)
    "other_content": (lambda man: None, "shard-000002.tar: sha256 differs", 16, N - 16),
    "inconsistent": (lambda man: man.update(num_samples=N + 5), "num_samples is 55 but the shards hold 50", None, None),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(MISMATCH))
def test_manifest_not_matching_shards(shards, backend, case):
    change, message, skipped, readable = MISMATCH[case]
    _edit_manifest(shards, change)
    if case == "missing_tar":
        (shards / "shard-000001.tar").unlink()
    if case == "other_content":  # a valid shard of the same size, but not the one built
        shutil.copy(shards / "shard-000000.tar", shards / "shard-000002.tar")
    with pytest.raises(ValueError, match=message):
        _loader(shards, backend, "error")
    if skipped is None:  # the manifest contradicts itself: nothing can be trusted
        with pytest.raises(ValueError, match=message):
            _loader(shards, backend, "skip")
        return
    loader = _loader(shards, backend, "skip")
    assert loader.skipped == skipped and loader.info.num_samples == readable
    assert sum(_epoch_keys(loader).values()) == loader.layout["yielded"]


def test_no_manifest(tmp_path):
    with pytest.raises(ValueError, match="manifest.json does not exist.*data build"):
        _loader(tmp_path, "webdataset", "error")


def test_unverified_bad_sample_is_named_while_reading(shards):
    """With data.verify=none nothing is checked up front: the WebDataset backend names the
    tar and key when it meets the sample (or skips and counts it); DALI fails with a hint."""
    _rewrite(shards / "shard-000001.tar", SAMPLE_DAMAGE["corrupt_image"][0])
    loader = _loader(shards, "webdataset", "error", "data.verify=none")
    with pytest.raises(ValueError, match=rf"shard-000001.tar: key {BAD}: .*data.on_bad_sample=skip"):
        _epoch_keys(loader)
    loader = _loader(shards, "webdataset", "skip", "data.verify=none", "data.num_workers=1")
    counts = _epoch_keys(loader)
    assert loader.skipped == 1 and BAD not in counts and len(counts) == N - 1
    loader = _loader(shards, "dali", "error", "data.verify=none")
    with pytest.raises(RuntimeError, match="data.verify=full"):
        _epoch_keys(loader)


@pytest.mark.parametrize("backend", BACKENDS)
def test_skipped_count_reaches_training_metrics(shards, tmp_path, backend):
    from gvae_dist.train import train_loop

    _rewrite(shards / "shard-000001.tar", SAMPLE_DAMAGE["corrupt_image"][0])
    cfg = load_config(
        None,
        [
            "data.image_size=32",
            "optim.batch_size=16",
            "model.channels=[8,8,16]",
            "model.hidden=32",
            "run.log_every=2",
            "eval.at_end=false",
            "tracking.enabled=false",
            "run.threads=1",
            "optim.steps=2",
            "data.source=shards",
            f"data.path={shards}",
            f"data.backend={backend}",
            "data.on_bad_sample=skip",
            "data.num_workers=0",
            f"run.output_dir={tmp_path}",
        ],
    )
    assert train_loop(cfg).metrics["data/skipped_samples"] == 1.0


# --- what the manifest does not list is never read; labels stay in their classes ---


def _extra_member(key, source=BAD, after="00000025"):
    """An edit that inserts a copy of sample ``source`` under ``key`` after sample ``after``."""

    def edit(name, data):
        out = [(name, data)]
        if name == f"{after}.json":
            out += [(n.replace(source, key, 1), d) for n, d in _EXTRA_PAYLOAD.items()]
        return out

    return edit


_EXTRA_PAYLOAD: dict = {}


def _copy_sample(tar, key):
    with tarfile.open(tar) as tf:
        _EXTRA_PAYLOAD.clear()
        _EXTRA_PAYLOAD.update({m.name: tf.extractfile(m).read() for m in tf if m.name.startswith(f"{key}.")})


def _reindex(shards, j):
    """Rewrite shard j's DALI index from its tar (as a stale-but-consistent index would be)."""
    from gvae_dist.data.shards import index_entries, write_index

    write_index(shards / f"shard-{j:06d}.idx", index_entries(shards / f"shard-{j:06d}.tar"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["unlisted", "duplicate", "unlisted_verify_none"])
def test_samples_the_manifest_does_not_list_are_never_read(shards, backend, case):
    """An extra sample in a tar (key 00000099, or a second copy of a listed key) used to be
    trained on in skip mode; with data.verify=none an index listing it fed it to the loader."""
    tar = shards / "shard-000001.tar"
    _copy_sample(tar, BAD)
    key = BAD if case == "duplicate" else "00000099"
    _rewrite(tar, _extra_member(key))
    extra = []
    if case == "unlisted_verify_none":
        _reindex(shards, 1)
        extra = ["data.verify=none"]
    message = (
        "appears more than once"
        if case == "duplicate"
        else r"not listed in manifest.json \(this shard lists keys 00000016..00000031\)"
    )
    with pytest.raises(ValueError, match=rf"shard-000001.tar: key {key}: {message}"):
        _loader(shards, backend, "error", *extra)
    loader = _loader(shards, backend, "skip", *extra)
    counts = _epoch_keys(loader)
    assert "00000099" not in counts and len(counts) == N and loader.info.num_samples == N
    assert sum(counts.values()) == loader.layout["yielded"]  # each listed sample once (+ padding)


def _set_label(value, key=BAD):
    """An edit that stores label 0 of ``key`` as ``value`` in both .labels.i64 and .json."""

    def edit(name, data):
        if name == f"{key}.labels.i64":
            labels = np.frombuffer(data, "<i8").copy()
            labels[0] = value
            return [(name, labels.tobytes())]
        if name == f"{key}.json":
            meta = json.loads(data)
            meta["labels"]["yaw"] = value
            return [(name, json.dumps(meta).encode())]
        return [(name, data)]

    return edit


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_outside_its_classes_is_named(shards, backend):
    """Label 99 for the 3-class weak label 'yaw' used to train silently."""
    _rewrite(shards / "shard-000001.tar", _set_label(99))
    message = rf"shard-000001.tar: key {BAD}: label 99 of factor 'yaw' is outside its 3 classes \[0, 2\]"
    with pytest.raises(ValueError, match=message):
        _loader(shards, backend, "error")
    loader = _loader(shards, backend, "skip")
    counts = _epoch_keys(loader)
    assert loader.skipped == 1 and BAD not in counts and len(counts) == N - 1


def _patch_labels_in_place(tar, key, value):
    """Overwrite label 0 of ``key`` in the tar's bytes (sizes and offsets unchanged, so the
    checksum differs but the index still fits: what data.verify=none cannot notice)."""
    with tarfile.open(tar) as tf:
        member = next(m for m in tf if m.name == f"{key}.labels.i64")
    raw = bytearray(tar.read_bytes())
    raw[member.offset_data : member.offset_data + 8] = np.int64(value).tobytes()
    tar.write_bytes(bytes(raw))


def test_unverified_label_outside_its_classes_is_named_while_reading(shards):
    _patch_labels_in_place(shards / "shard-000001.tar", BAD, 99)
    message = rf"shard-000001.tar: key {BAD}: (ValueError: )?label 99 of factor 'yaw' is outside its 3 classes"
    for backend in BACKENDS:
        loader = _loader(shards, backend, "error", "data.verify=none")
        with pytest.raises(ValueError, match=message):
            _epoch_keys(loader)
    loader = _loader(shards, "webdataset", "skip", "data.verify=none")
    assert BAD not in _epoch_keys(loader) and loader.skipped == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_label_vector_of_the_wrong_length_is_named_before_dali(shards, backend):
    """DALI used to fail with a bare `Assert "IsDenseTensor()" failed`: now the index sizes are
    checked in every verify mode, so the error names shard and key before a pipeline runs."""
    _rewrite(shards / "shard-000001.tar", _replace(f"{BAD}.labels.i64", np.arange(3, dtype="<i8").tobytes()))
    _reindex(shards, 1)
    for verify in ("checksum", "none"):
        with pytest.raises(ValueError, match=rf"shard-000001.tar: key {BAD}: .labels.i64 holds 24 bytes, expected 72"):
            _loader(shards, backend, "error", f"data.verify={verify}")
        loader = _loader(shards, backend, "skip", f"data.verify={verify}")
        assert BAD not in _epoch_keys(loader) and loader.skipped == 1
