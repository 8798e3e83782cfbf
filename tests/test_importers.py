"""Importers: tiny files in the exact dSprites .npz, 3dshapes .h5 and folder + CSV formats."""

from __future__ import annotations

import io
import itertools
import json
import shlex
import tarfile

import h5py
import numpy as np
import pytest
from PIL import Image

from gvae_dist.config import DataConfig
from gvae_dist.data.importers import build_dataset


def _samples(out):
    """{source_row: (image uint8 HWC, labels, factors, meta)} over all shards of ``out``."""
    man = json.loads((out / "manifest.json").read_text())
    found = {}
    for rec in man["shards"]:
        with tarfile.open(out / rec["tar"]) as tf:
            m = {x.name: tf.extractfile(x).read() for x in tf}
        for name in m:
            if name.endswith(".json"):
                key = name.split(".")[0]
                meta = json.loads(m[name])
                img = np.asarray(Image.open(io.BytesIO(m[f"{key}.{man['image_format']}"])))
                found[meta["source_row"]] = (
                    img.reshape(*img.shape[:2], -1),
                    np.frombuffer(m[f"{key}.labels.i64"], "<i8"),
                    np.frombuffer(m[f"{key}.factors.f32"], "<f4"),
                    meta,
                )
    return man, found


def _dsprites_npz(path, n=24):
    """The dSprites layout: imgs [N, 64, 64] uint8 in {0, 1}; latents [N, 6] (color .. posY)."""
    rng = np.random.default_rng(0)
    classes = np.stack(
        [
            np.zeros(n, int),
            rng.integers(0, 3, n),
            rng.integers(0, 6, n),
            rng.integers(0, 40, n),
            rng.integers(0, 32, n),
            rng.integers(0, 32, n),
        ],
        1,
    )
    values = np.stack(
        [
            np.ones(n),
            classes[:, 1] + 1.0,
            0.5 + classes[:, 2] * 0.1,
            classes[:, 3] * (2 * np.pi / 39),
            classes[:, 4] / 31,
            classes[:, 5] / 31,
        ],
        1,
    )
    imgs = (rng.random((n, 64, 64)) < 0.2).astype(np.uint8)
    # the real file's metadata is a pickled dict: an object array that allow_pickle=False refuses to read
    metadata = np.array({"description": "dSprites"}, dtype=object)
    np.savez_compressed(path, imgs=imgs, latents_values=values, latents_classes=classes, metadata=metadata)
    return imgs, values, classes


def test_dsprites_npz(tmp_path):
    imgs, values, classes = _dsprites_npz(tmp_path / "dsprites.npz")
    d = DataConfig(label_bins=4, seed=5)
    man = build_dataset(
        "dsprites", tmp_path / "out", d, input_path=str(tmp_path / "dsprites.npz"), shard_size=10, progress=False
    )
    assert man["num_samples"] == 24 and man["channels"] == 1 and man["image_size"] == 64
    assert [f["name"] for f in man["factors"]] == ["shape", "scale", "orientation", "posX", "posY"]
    assert any("color" in note for note in man["notes"])  # constant: dropped
    shape_meta = man["labels"][0]
    assert shape_meta["discrete"] and shape_meta["num_classes"] == len(np.unique(classes[:, 1]))
    _, found = _samples(tmp_path / "out")
    assert sorted(found) == list(range(24))
    for row, (img, labels, factors, _) in found.items():
        np.testing.assert_array_equal(img[..., 0], imgs[row] * 255)
        np.testing.assert_allclose(factors, [classes[row, 1], *values[row, 2:]], rtol=1e-6)
        assert labels[0] == classes[row, 1]  # discrete latent: its class is the label
        assert all(0 <= v < 4 for v in labels[1:])
    # stored in a seeded shuffled order, not in the file's factor order
    assert [found[r][3]["key"] for r in range(24)] != [f"{i:08d}" for i in range(24)]


def test_3dshapes_h5_with_subset(tmp_path):
    n = 30
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    grid = np.array(list(itertools.product(range(10), range(4))))[:n]
    labels = np.stack(
        [
            grid[:, 0] / 10,
            rng.integers(0, 10, n) / 10,
            rng.integers(0, 10, n) / 10,
            0.75 + rng.integers(0, 8, n) / 14,
            grid[:, 1].astype(float),
            np.linspace(-30, 30, n),
        ],
        1,
    )
    with h5py.File(tmp_path / "3dshapes.h5", "w") as fh:
        fh["images"], fh["labels"] = images, labels
    man = build_dataset(
        "3dshapes",
        tmp_path / "out",
        DataConfig(image_size=32),
        num=12,
        input_path=str(tmp_path / "3dshapes.h5"),
        workers=2,
        shard_size=5,
        progress=False,
    )
    names = [f["name"] for f in man["factors"]]
    assert names == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    assert [f["discrete"] for f in man["factors"]] == [False] * 4 + [True, False]
    _, found = _samples(tmp_path / "out")
    assert len(found) == 12 and len(set(found)) == 12
    for row, (img, lab, factors, meta) in found.items():
        assert img.shape == (32, 32, 3)  # resized to data.image_size
        np.testing.assert_allclose(factors, labels[row], rtol=1e-6)
        assert lab[4] == labels[row, 4] and meta["labels"]["shape"] == int(labels[row, 4])
        ref = np.asarray(Image.fromarray(images[row]).resize((32, 32), Image.BILINEAR))
        np.testing.assert_array_equal(img, ref)


def _folder(tmp_path, rows):
    root = tmp_path / "faces"
    root.mkdir()
    rng = np.random.default_rng(2)
    for i, size in enumerate([(40, 30), (30, 50), (64, 64), (20, 20), (33, 47), (50, 40)]):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        mode = "L" if i == 3 else "RGB"
        Image.fromarray(arr).convert(mode).save(root / f"img.{i}.{'jpg' if i == 4 else 'png'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_folder_with_labels_csv(tmp_path):
    root = _folder(
        tmp_path,
        [
            "yaw,filename,expression,person",
            "-40.5,img.0.png,happy,3",
            "12.25,img.1.png,sad,3",
            "0.0,img.2.png,happy,7",
            "33.1,img.3.png,neutral,9",
            "-5,img.4.jpg,sad,7",
            "20,img.5.png,happy,3",
        ],
    )
    man = build_dataset(
        "folder",
        tmp_path / "out",
        DataConfig(image_size=32, label_bins=3),
        input_path=str(root),
        shard_size=4,
        progress=False,
    )
    assert [f["name"] for f in man["factors"]] == ["yaw", "expression", "person"]
    by = {f["name"]: f for f in man["factors"]}
    assert not by["yaw"]["discrete"] and (by["yaw"]["low"], by["yaw"]["high"]) == (-40.5, 33.1)
    assert by["expression"]["categories"] == ["happy", "neutral", "sad"]
    assert by["person"]["discrete"] and by["person"]["categories"] == [3, 7, 9]  # few integers: classes
    _, found = _samples(tmp_path / "out")
    assert len(found) == 6
    yaw_bins = {0: 0, 1: 2, 2: 1, 3: 2, 4: 1, 5: 2}  # 3 uniform bins over [-40.5, 33.1]
    expr = {0: 0, 1: 2, 2: 0, 3: 1, 4: 2, 5: 0}
    yaw = [-40.5, 12.25, 0.0, 33.1, -5, 20]
    for row, (img, labels, factors, meta) in found.items():
        assert img.shape == (32, 32, 3)
        assert labels.tolist()[:2] == [yaw_bins[row], expr[row]]
        assert factors[:2].tolist() == [np.float32(yaw[row]), expr[row]]
        assert meta["file"].startswith(f"img.{row}.")


@pytest.mark.parametrize(
    "rows, message",
    [
        (["file,yaw", "img.0.png,1.0", "missing.png,2.0", "img.2.png,3"], "not in"),
        (["file,yaw", "img.0.png,1.0", "img.1.png,", "img.2.png,3"], "line 3: column 'yaw' is empty"),
        (["file,yaw", "img.0.png,1.0", "img.1.png,1.0"], "constant"),
        (["file,yaw", "img.0.png,1.0,7", "img.1.png,2"], "line 2: 3 fields"),
    ],
)
def test_folder_csv_errors(tmp_path, rows, message):
    root = _folder(tmp_path, rows)
    with pytest.raises(ValueError, match=message):
        build_dataset("folder", tmp_path / "out", DataConfig(), input_path=str(root), progress=False)


def test_importer_input_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", imgs=np.zeros((2, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"latents_values"):
        build_dataset("dsprites", tmp_path / "o", input_path=str(tmp_path / "bad.npz"), progress=False)
    with h5py.File(tmp_path / "bad.h5", "w") as fh:
        fh["images"] = np.zeros((2, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\['labels'\]"):
        build_dataset("3dshapes", tmp_path / "o", input_path=str(tmp_path / "bad.h5"), progress=False)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        build_dataset("3dshapes", tmp_path / "o", input_path=str(tmp_path / "junk.h5"), progress=False)
    _dsprites_npz(tmp_path / "ok.npz", n=5)
    with pytest.raises(ValueError, match="exceeds"):
        build_dataset("dsprites", tmp_path / "o", num=6, input_path=str(tmp_path / "ok.npz"), progress=False)
    with pytest.raises(ValueError, match="needs --input"):
        build_dataset("folder", tmp_path / "o", progress=False)


# --- bad input: refused before anything is written, naming the file, column/array and row -------


def _refused(tmp_path, source, path, message, while_writing=False, **kw):
    """The import fails with ``message``; nothing is written, or (a bad image found ``while_writing``)
    nothing a loader would accept."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message) as err:
        build_dataset(source, out, DataConfig(image_size=32), input_path=str(path), progress=False, **kw)
    assert "cannot read the image" not in str(err.value)  # the range error itself, not a wrapper
    if not while_writing:
        assert not out.exists()
        return
    from gvae_dist.data.shardset import open_shards

    with pytest.raises(ValueError, match="manifest.json does not exist .a build is incomplete"):
        open_shards(out)


def _npz(tmp_path, name, **change):
    """A tiny dSprites .npz with some arrays replaced."""
    _dsprites_npz(tmp_path / "base.npz", n=8)
    arrays = dict(np.load(tmp_path / "base.npz", allow_pickle=True))  # our own file, metadata included
    arrays.update(change)
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


def test_dsprites_bad_arrays_are_refused(tmp_path):
    values = np.load(_npz(tmp_path, "ok.npz"))["latents_values"].copy()
    values[[3, 5], 2] = np.nan  # a NaN column used to look constant and was dropped
    _refused(
        tmp_path,
        "dsprites",
        _npz(tmp_path, "nan.npz", latents_values=values),
        r"nan.npz array 'latents_values': factor 'scale' has 2 non-finite value\(s\).*first at row 3",
    )
    _refused(
        tmp_path,
        "dsprites",
        _npz(tmp_path, "wide.npz", imgs=np.full((8, 64, 64), 300, np.int32)),
        r"wide.npz array 'imgs': integer pixels must lie in 0..255, found values in \[300, 300\]",
    )
    _refused(
        tmp_path,
        "dsprites",
        _npz(tmp_path, "neg.npz", imgs=np.full((8, 64, 64), -0.5, np.float32)),
        r"neg.npz array 'imgs': float pixels must lie in \[0, 1\] or \[0, 255\], found .*-0.5",
    )
    _refused(
        tmp_path,
        "dsprites",
        _npz(tmp_path, "1d.npz", latents_values=np.zeros(8), latents_classes=np.zeros(8)),
        r"1d.npz: array 'latents_values' must be \[N, K\].*got shape \[8\]; one factor needs shape \[N, 1\]",
    )
    _refused(
        tmp_path,
        "dsprites",
        _npz(
            tmp_path,
            "empty.npz",
            imgs=np.zeros((0, 64, 64), np.uint8),
            latents_values=np.zeros((0, 6)),
            latents_classes=np.zeros((0, 6)),
        ),
        r"empty.npz array 'imgs': holds no images",
    )
    _refused(
        tmp_path,
        "dsprites",
        _npz(tmp_path, "c2.npz", imgs=np.zeros((8, 64, 64, 2), np.uint8)),
        r"c2.npz array 'imgs': images must have shape \[N, H, W\] or \[N, H, W, C\] with C = 1 or 3",
    )


def test_float_pixels_follow_the_rule(tmp_path):
    """Floats in [0, 1] are scaled by 255 (dSprites-style 0/1 uint8 too), floats in [0, 255] rounded."""
    rng = np.random.default_rng(3)
    unit = rng.random((6, 32, 32, 3)).astype(np.float32)
    labels = rng.random((6, 2))
    for name, images, expect in (("unit", unit, np.rint(unit * 255)), ("wide", unit * 255, np.rint(unit * 255))):
        with h5py.File(tmp_path / f"{name}.h5", "w") as fh:
            fh["images"], fh["labels"] = images, labels
        build_dataset(
            "3dshapes",
            tmp_path / name,
            DataConfig(image_size=32),
            input_path=str(tmp_path / f"{name}.h5"),
            progress=False,
        )
        _, found = _samples(tmp_path / name)
        for row, (img, *_rest) in found.items():
            np.testing.assert_array_equal(img, expect[row].astype(np.uint8))
    with h5py.File(tmp_path / "nan.h5", "w") as fh:
        fh["images"], fh["labels"] = np.where(np.arange(6)[:, None, None, None] == 4, np.nan, unit), labels
    _refused(tmp_path, "3dshapes", tmp_path / "nan.h5", r"nan.h5 dataset 'images': image 4 has a non-finite pixel")


def _csv_rows(n=20):
    return ["file,yaw,expression"] + [
        f"img.{i % 6}.{'jpg' if i % 6 == 4 else 'png'},{i * 1.5 - 7:.2f},{('happy', 'sad')[i % 2]}" for i in range(n)
    ]


@pytest.mark.parametrize(
    "line, cell, message",
    [
        (9, "nan", r"line 9: column 'yaw' holds 'nan' \(not a finite number; 1 such"),
        (5, "-inf", r"line 5: column 'yaw' holds '-inf' \(not a finite number"),
        (12, "n/a", r"line 12: column 'yaw' holds 'n/a' \(text in a numeric column"),
    ],
)
def test_folder_csv_non_finite_cell_is_refused(tmp_path, line, cell, message):
    """One bad cell used to turn continuous yaw into a 20-class categorical factor."""
    rows = _csv_rows()
    file, _, expr = rows[line - 1].split(",")
    rows[line - 1] = f"{file},{cell},{expr}"
    _refused(tmp_path, "folder", _folder(tmp_path, rows), f"labels.csv {message}")


def test_folder_csv_good_columns_still_import(tmp_path):
    man = build_dataset(
        "folder",
        tmp_path / "out",
        DataConfig(image_size=16),
        input_path=str(_folder(tmp_path, _csv_rows())),
        progress=False,
    )
    assert [(f["name"], f["discrete"]) for f in man["factors"]] == [("yaw", False), ("expression", True)]


def test_folder_16_bit_image_out_of_range_is_refused(tmp_path):
    """PIL clips 16-bit pixels above 255 to 255 when converting: refused, naming the image."""
    root = _folder(tmp_path, _csv_rows())
    Image.fromarray(np.array([[0, 100], [300, 65535]], np.uint16)).save(root / "img.2.png")
    _refused(
        tmp_path,
        "folder",
        root,
        r"faces/img.2.png \(mode I;16\): integer pixels must lie in 0..255, "
        r"found values in \[0, 65535\]",
        while_writing=True,
    )


def test_eight_bit_maps_wide_pixel_files_by_the_pixel_rule():
    """The one rule the folder importer and ``gvae-dist encode`` share for non-8-bit files:
    16-bit values in 0..255 kept, 32-bit float in [0, 1] scaled by 255, 8-bit files untouched."""
    from gvae_dist.data.checks import PixelRangeError, eight_bit

    grey = Image.fromarray(np.array([[0, 7], [128, 255]], np.uint8))
    assert eight_bit(grey, "g.png") is grey
    wide = eight_bit(Image.fromarray(np.array([[0, 7], [128, 255]], np.uint16)), "w.png")
    assert wide.mode == "L" and np.asarray(wide).tolist() == [[0, 7], [128, 255]]
    unit = eight_bit(Image.fromarray(np.array([[0.0, 0.5], [0.25, 1.0]], np.float32)), "f.tif")
    assert np.asarray(unit).tolist() == [[0, 128], [64, 255]]
    with pytest.raises(PixelRangeError, match=r"w16.png \(mode I;16\): integer pixels must lie in 0..255"):
        eight_bit(Image.fromarray(np.array([[0, 300]], np.uint16)), "w16.png")


def test_check_source_refuses_a_label_outside_its_classes(tmp_path):
    """The last gate before writing also holds for weak labels (built by the importers)."""
    from gvae_dist.data.checks import check_source
    from gvae_dist.data.importers import open_source

    src = open_source("faces", DataConfig(image_size=16, label_bins=3), num=8)
    check_source(src, "faces")
    src.labels[5, 0] = 99
    with pytest.raises(ValueError, match=r"faces: row 5: label 99 of factor 'yaw' is outside its 3 classes \[0, 2\]"):
        check_source(src, "faces")


# --- one importer for labelled arrays (--source arrays; dsprites and 3dshapes are its presets) ---


def _faces_npz(path, n=20):
    """A labelled face set as people keep one: channels-first float RGB in [0, 1], factor values with
    one column of class ids, names and factor groups stored in the file."""
    rng = np.random.default_rng(4)
    images = rng.random((n, 3, 32, 32)).astype(np.float32)
    factors = np.stack([rng.uniform(-30, 30, n), rng.uniform(-10, 10, n), rng.integers(0, 3, n)], 1)
    np.savez(
        path,
        images=images,
        factors=factors,
        factor_names=np.array(["yaw", "pitch", "smile"]),
        factor_groups=np.array(["pose=yaw,pitch", "expression=smile"]),
    )
    return images, factors


def test_arrays_npz_channels_first_names_classes_and_groups(tmp_path, capsys):
    from gvae_dist.cli import main

    images, factors = _faces_npz(tmp_path / "faces.npz")
    out = tmp_path / "out"
    rc = main(
        [
            "data",
            "build",
            "--source",
            "arrays",
            "--input",
            str(tmp_path / "faces.npz"),
            "--out",
            str(out),
            "--workers",
            "1",
            "--set",
            "data.image_size=32",
            "--set",
            "data.eval_fraction=0.2",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    man, found = _samples(out)
    assert [(f["name"], f["discrete"]) for f in man["factors"]] == [("yaw", False), ("pitch", False), ("smile", True)]
    assert man["labels"][2] == {"name": "smile", "discrete": True, "low": 0, "num_classes": 3}
    assert man["groups"] == {"pose": ["yaw", "pitch"], "expression": ["smile"]}
    assert man["split"] == {"train": 16, "eval": 4, "eval_fraction": 0.2}
    assert any("channels-first" in note for note in man["notes"])
    for row, (img, labels, stored, _) in found.items():
        np.testing.assert_array_equal(img, np.rint(np.moveaxis(images[row], 0, -1) * 255).astype(np.uint8))
        np.testing.assert_allclose(stored, factors[row], rtol=1e-6)
        assert labels[2] == factors[row, 2]  # a discrete factor's label is its class
    # the printed partitions line is a --set that a config accepts, validated against the manifest
    hint = shlex.split(printed.split(f"data.path={out}")[1].splitlines()[0])
    assert main(["config", "--set", "data.source=shards", "--set", f"data.path={out}", *hint]) == 0
    cfg = capsys.readouterr().out
    assert "- yaw\n" in cfg and "name: expression" in cfg and "latent_dim: 13" in cfg
    assert (
        main(
            [
                "config",
                "--set",
                "data.source=shards",
                "--set",
                f"data.path={out}",
                "--set",
                "partitions=[{name: pose, size: 10, factors: [roll]}]",
            ]
        )
        == 2
    )
    assert "partitions.0.factors: 'roll' is not a weak label" in capsys.readouterr().err


def test_export_reads_back_as_arrays_with_no_flags(tmp_path, capsys):
    """`data export` writes the generator's own pixels and factors; `--source arrays` finds every
    key, name and group in the file; an existing file is never replaced."""
    from gvae_dist.cli import main
    from gvae_dist.data.synthetic import generate

    npz, out = tmp_path / "faces.npz", tmp_path / "shards"
    sets = ["--set", "data.seed=3", "--set", "data.image_size=32"]
    assert main(["data", "export", "--source", "faces", "--num", "30", "--out", str(npz), *sets]) == 0
    assert "pose=yaw,pitch,roll; expression=mouth,eyes,brow" in capsys.readouterr().out
    truth = generate("faces", 30, seed=3, image_size=32)
    assert (
        main(["data", "build", "--source", "arrays", "--input", str(npz), "--out", str(out), "--workers", "1", *sets])
        == 0
    )
    man, found = _samples(out)
    assert [f["name"] for f in man["factors"]] == truth.factor_names and not any(f["discrete"] for f in man["factors"])
    assert man["groups"] == {"pose": ["yaw", "pitch", "roll"], "expression": ["mouth", "eyes", "brow"]}
    assert sorted(found) == list(range(30))
    for row, (img, _, stored, _) in found.items():
        np.testing.assert_array_equal(img, truth.images[row])
        np.testing.assert_allclose(stored, truth.factors[row], rtol=1e-6)
    # the hint reproduces the face presets' partitions and latent size
    assert "{name: rest, size: 8, factors: []}]' --set model.latent_dim=16" in capsys.readouterr().out
    before = npz.read_bytes()
    assert main(["data", "export", "--source", "shapes", "--num", "5", "--out", str(npz)]) == 2
    assert "already exists" in capsys.readouterr().err and npz.read_bytes() == before
    assert main(["data", "export", "--source", "faces", "--out", str(tmp_path / "faces.h5")]) == 2
    assert "ending in .npz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces.npz", "shards"]  # no partial file left


def test_arrays_h5_with_flags_and_provided_weak_labels(tmp_path):
    n = 12
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)
    values = np.stack([rng.uniform(0, 1, n), rng.integers(0, 2, n).astype(float)], 1)
    weak = np.stack([rng.integers(0, 4, n), values[:, 1]], 1).astype(np.int64)
    with h5py.File(tmp_path / "d.h5", "w") as fh:
        fh["x"], fh["y"], fh["wl"] = grey, values, weak
    layout = {
        "images": "x",
        "factors": "y",
        "weak_labels": "wl",
        "names": ("light", "glasses"),
        "discrete": frozenset({"glasses"}),
    }
    man = build_dataset(
        "arrays",
        tmp_path / "out",
        DataConfig(image_size=32),
        input_path=str(tmp_path / "d.h5"),
        layout=layout,
        progress=False,
    )
    assert man["channels"] == 1 and [f["name"] for f in man["factors"]] == ["light", "glasses"]
    assert [lab["num_classes"] for lab in man["labels"]] == [int(weak[:, 0].max()) + 1, 2]
    assert all(lab.get("provided") for lab in man["labels"])
    _, found = _samples(tmp_path / "out")
    for row, (img, labels, _, _) in found.items():
        np.testing.assert_array_equal(img[..., 0], grey[row])
        np.testing.assert_array_equal(labels, weak[row])  # as provided, not re-binned
    with pytest.raises(ValueError, match=r"provides weak labels, so data.label_flip_prob \(0.2\)"):
        build_dataset(
            "arrays",
            tmp_path / "o2",
            DataConfig(image_size=32, label_flip_prob=0.2),
            input_path=str(tmp_path / "d.h5"),
            layout=layout,
            progress=False,
        )


@pytest.mark.parametrize(
    "change, layout, message",
    [
        ({}, {"images": "pixels"}, r"no array 'pixels' for the images \(has \[.*\]\); name the right one with --keys"),
        ({"factor_names": np.array(["a", "b"])}, {}, r"'factor_names' lists 2 factor names for 3 factor columns"),
        ({}, {"discrete": frozenset({"roll"})}, r"--discrete names \['roll'\], not factors of the file"),
        ({"factor_groups": np.array(["pose=yaw,roll"])}, {}, r"group 'pose' names \['roll'\], not factors"),
        ({"factor_groups": np.array(["pose yaw"])}, {}, r"group 'pose yaw' must read NAME=factor,factor"),
        ({"weak_labels": -np.ones((20, 3))}, {}, r"array 'weak_labels': weak labels are class ids 0, 1, ...; row 0"),
        (
            {"factors": np.zeros((19, 3))},
            {},
            r"one row per image.*'images' \[20, 3, 32, 32\] \(20 images\), 'factors' \[19, 3\]",
        ),
        ({}, {"discrete": frozenset({"yaw"})}, r"array 'factors': factor 'yaw' is discrete but row 0 holds"),
    ],
)
def test_arrays_bad_layouts_are_refused_by_name(tmp_path, change, layout, message):
    _faces_npz(tmp_path / "base.npz")
    arrays = {**dict(np.load(tmp_path / "base.npz")), **change}
    np.savez(tmp_path / "bad.npz", **arrays)
    _refused(tmp_path, "arrays", tmp_path / "bad.npz", message, layout=layout)


def test_layout_flags_parse_and_refuse():
    from gvae_dist.data.importers import parse_layout_flags, partitions_hint

    got = parse_layout_flags("images=imgs, classes=c", "a,b", "b", "pose=a;expr=b")
    assert got == {
        "images": "imgs",
        "classes": "c",
        "names": ("a", "b"),
        "discrete": frozenset({"b"}),
        "groups": {"pose": ("a",), "expr": ("b",)},
    }
    with pytest.raises(ValueError, match=r"--keys 'imgs': expected ROLE=KEY pairs"):
        parse_layout_flags("imgs")
    with pytest.raises(ValueError, match="group 'pose' is given twice"):
        parse_layout_flags(groups="pose=a;pose=b")
    assert partitions_hint({"pose": ["a", "b"], "empty": []}) == (
        "--set 'partitions=[{name: pose, size: 3, factors: [a, b]}, {name: rest, size: 8, factors: []}]' "
        "--set model.latent_dim=11"
    )
    with pytest.raises(ValueError, match="apply to --source arrays / dsprites / 3dshapes"):
        build_dataset("faces", "/nonexistent", layout={"images": "x"}, progress=False)
