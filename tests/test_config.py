"""Config tree: presets, overrides, validation messages, round trip."""

from pathlib import Path

import pytest

from gvae_dist.config import ConfigError, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("study_")))
def test_every_preset_loads(preset):
    cfg = load_config(CONFIGS / preset)
    assert sum(p.size for p in cfg.partitions) == cfg.model.latent_dim


@pytest.mark.parametrize("objective", ["beta", "infovae", "dip2"])
def test_ungated_baseline_differs_only_in_gate_pairing_and_name(objective):
    a = load_config(CONFIGS / f"faces_{objective}_gated.yaml").to_dict()
    b = load_config(CONFIGS / f"faces_{objective}_ungated.yaml").to_dict()
    assert a["gate"]["enabled"] and not b["gate"]["enabled"]
    assert a["objective"]["name"] == b["objective"]["name"] == objective
    assert a["pairing"]["shared_factor"] > 0 and b["pairing"]["identity"] == 1.0 and b["pairing"]["shared_factor"] == 0
    for section in a:
        if section not in ("gate", "run", "pairing"):
            assert a[section] == b[section], section


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["objective.beta=8", "optim.lr=1e-4", "optim.betas=[0.5, 0.9]", "partitions.0.size=3",
                             "partitions.2.size=3", "gate.enabled=false", "tracking.uri=null"])
    assert cfg.objective.beta == 8.0 and isinstance(cfg.objective.beta, float)
    assert cfg.optim.lr == 1e-4  # YAML 1.1 parses 1e-4 as a string
    assert cfg.optim.betas == [0.5, 0.9] and not cfg.gate.enabled
    assert [p.size for p in cfg.partitions] == [3, 4, 3]


@pytest.mark.parametrize("override, message", [
    ("objective.bta=2", "objective.bta: unknown key (did you mean 'beta'?)"),
    ("objective.name=vae", "objective.name: 'vae' is not allowed; choose one of 'beta', 'infovae'"),
    ("optim.steps=ten", "optim.steps: expected an integer"),
    ("optim.steps=0", "optim.steps: must be > 0"),
    ("data.label_flip_prob=1.5", "data.label_flip_prob: must be in [0, 1]"),
    ("model.latent_dim=12", "sizes add up to 10"),
    ("partitions.0.factors=[nose]", "partitions.0.factors: 'nose' is not a factor"),
    ("objective.name=infovae", None),
    ("data.source=shards", "data.path"),
    ("nosection.x=1", "nosection: unknown key"),
    ("pairing.identity_partitions=[face]", "pairing.identity_partitions: unknown partition 'face'"),
])
def test_bad_values_name_the_key(override, message):
    if message is None:  # a valid override for contrast
        load_config(None, [override])
        return
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_infovae_negative_mmd_weight_rejected():
    with pytest.raises(ConfigError, match="mmd_lambda"):
        load_config(None, ["objective.name=infovae", "objective.alpha=0", "objective.mmd_lambda=0.5"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "faces_infovae_ungated.yaml", ["objective.mmd_lambda=100"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(path) == cfg


def test_extends_loop_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_partitions_are_checked_against_the_shard_manifest(tmp_path, capsys):
    """Partitions naming weak labels the shards lack fail in `gvae-dist config` and `train`
    before any data is read, with the manifest's label names; matching ones pass."""
    from gvae_dist.cli import main
    from gvae_dist.config import DataConfig
    from gvae_dist.data.importers import build_dataset
    from gvae_dist.data.synthetic import FACTOR_SPECS

    shards = tmp_path / "shapes"
    build_dataset("shapes", shards, DataConfig(image_size=32), num=20, shard_size=10, progress=False)
    names = [s.name for s in FACTOR_SPECS["shapes"]]
    sets = ["--set", "data.source=shards", "--set", f"data.path={shards}"]  # faces' partitions: yaw, ...
    for cmd in ("config", "train"):
        assert main([cmd, *sets]) == 2
        err = capsys.readouterr().err
        assert (f"partitions.0.factors: 'yaw', 'pitch', 'roll' are not weak labels in "
                f"{shards / 'manifest.json'} (data.path); available: {', '.join(names)}") in err, err
    good = f"partitions=[{{name: a, size: 4, factors: [{names[0]}]}}, {{name: rest, size: 6}}]"
    assert main(["config", *sets, "--set", good]) == 0
    with pytest.raises(ConfigError, match=r"'pich' is not a factor of data.source='faces'; available: yaw, pitch"):
        load_config(None, ["partitions=[{name: a, size: 4, factors: [pich]}, {name: rest, size: 6}]"])
