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
    cfg = load_config(
        None,
        [
            "objective.beta=8",
            "optim.lr=1e-4",
            "optim.betas=[0.5, 0.9]",
            "partitions.0.size=3",
            "partitions.2.size=3",
            "gate.enabled=false",
            "tracking.uri=null",
        ],
    )
    assert cfg.objective.beta == 8.0 and isinstance(cfg.objective.beta, float)
    assert cfg.optim.lr == 1e-4  # YAML 1.1 parses 1e-4 as a string
    assert cfg.optim.betas == [0.5, 0.9] and not cfg.gate.enabled
    assert [p.size for p in cfg.partitions] == [3, 4, 3]


@pytest.mark.parametrize(
    "override, message",
    [
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
        ("eval.jobs=0", "eval.jobs: must be > 0"),
        ("objective.warmup_steps=-5", "objective.warmup_steps: must be >= 0"),
        ("gate.drop_high_loss=1", "gate.drop_high_loss: must be in [0, 1)"),
    ],
)
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


# --- hostile or out-of-range input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lr=.nan", "optim.lr: expected a finite number, got nan"),
        ("optim.lr=.inf", "optim.lr: expected a finite number, got inf"),
        ("objective.beta=-.inf", "objective.beta: expected a finite number"),
        ("optim.betas=[0.9, .nan]", "optim.betas.1: expected a finite number"),
        ("partitions.5.size=1", "--set partitions.5.size: index 5 is out of range: partitions has 3 entries"),
        ("partitions.x.size=1", "--set partitions.x.size: partitions is a list; use an index 0..2"),
        ("optim.batch_size=1000000000", "optim.batch_size: at most 65_536"),
        ("data.num_train=100000000", "data.num_train: at most 2_000_000"),
        ("pairing.bank_size=10000000", "pairing.bank_size: at most 262_144"),
        ("model.channels=[32, 100000]", "model.channels.1: at most 4_096"),
        ("eval.num_train=10000000", "eval.num_train: at most 200_000"),
        ("run.name=/tmp/elsewhere", "run.name: '/tmp/elsewhere' must be a relative name inside run.output_dir"),
        ("run.name=../elsewhere", "run.name: '../elsewhere' may not contain '..'"),
        ("run.name=a/../../elsewhere", "run.name: 'a/../../elsewhere' may not contain '..'"),
        ("run.name=.", "run.name: '.'"),
    ],
)
def test_hostile_values_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_every_bound_is_documented_and_defaults_are_within_it():
    from gvae_dist.config import explain

    bounded = [line for line in explain() if ", max " in line]
    assert {line.split()[0] for line in bounded} >= {
        "optim.batch_size",
        "data.num_train",
        "data.num_eval",
        "model.latent_dim",
        "pairing.bank_size",
        "eval.num_train",
        "eval.num_test",
        "eval.batch_size",
        "data.shuffle_buffer",
    }
    assert load_config(None, ["run.name=group/run-1"]).run_dir() == Path("runs/group/run-1")


def test_run_name_through_a_symlink_out_of_output_dir_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match=r"run.name: 'link/x' resolves to .*outside run.output_dir"):
        load_config(None, [f"run.output_dir={tmp_path / 'out'}", "run.name=link/x"])


def _laughs(levels: int, key: str = "a") -> str:
    """YAML whose last alias expands to 9**levels values in 9 * levels short lines."""
    lines = [f"{key}0: &{key}0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    lines += [f"{key}{i}: &{key}{i} [{', '.join([f'*{key}{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_across_extends_is_refused_before_merging(tmp_path):
    import time

    (tmp_path / "base.yaml").write_text(_laughs(8))  # 468 bytes that would expand to 4.9e8 values
    (tmp_path / "run.yaml").write_text("extends: base.yaml\nobjective: {beta: 2}\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"base\.yaml: its YAML aliases \(\*name\) expand to [\d_]+ values"):
        load_config(tmp_path / "run.yaml")
    assert time.perf_counter() - t0 < 2.0
    # the same bomb in an override value
    with pytest.raises(ConfigError, match=r"--set model.channels: its YAML aliases"):
        load_config(
            None,
            [
                "model.channels=[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                "[*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"
            ],
        )
    # a few honest aliases still load
    (tmp_path / "ok.yaml").write_text("optim: &o {lr: 0.001}\nobjective: {beta: 2}\n")
    assert load_config(tmp_path / "ok.yaml").optim.lr == 0.001


def test_oversized_config_file_is_refused_naming_it(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"big\.yaml: 2_000_000 bytes, more than a config file may hold"):
        load_config(big)


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("http://alice:s3cret@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
        ("https://tok3n@mlflow.example/x", "https://***@mlflow.example/x"),
        ("postgresql://u:s3cret@db/mlflow", "postgresql://u:***@db/mlflow"),
        ("s3://bucket/x?X-Amz-Signature=s3cret&y=1", "s3://bucket/x?X-Amz-Signature=***&y=1"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
    ],
)
def test_redact_uri(uri, shown):
    from gvae_dist.config import redact_uri

    assert redact_uri(uri) == shown and redact_uri(shown) == shown


def test_saved_config_holds_no_credentials(tmp_path):
    cfg = load_config(None, ["tracking.uri=http://alice:s3cret@127.0.0.1:5000"])
    text = save_config(cfg, tmp_path / "config.yaml").read_text()
    assert "s3cret" not in text and "http://alice:***@127.0.0.1:5000" in text


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
        assert (
            f"partitions.0.factors: 'yaw', 'pitch', 'roll' are not weak labels in "
            f"{shards / 'manifest.json'} (data.path); available: {', '.join(names)}"
        ) in err, err
    good = f"partitions=[{{name: a, size: 4, factors: [{names[0]}]}}, {{name: rest, size: 6}}]"
    assert main(["config", *sets, "--set", good]) == 0
    with pytest.raises(ConfigError, match=r"'pich' is not a factor of data.source='faces'; available: yaw, pitch"):
        load_config(None, ["partitions=[{name: a, size: 4, factors: [pich]}, {name: rest, size: 6}]"])


def test_replace_returns_a_validated_copy_and_names_a_bad_key():
    from gvae_dist.config import Config, ConfigError

    cfg = Config()
    new = cfg.replace({"run.name": "trial_3", "partitions.2.size": 6, "model.latent_dim": 14})
    assert (new.run.name, new.partitions[2].size, new.model.latent_dim) == ("trial_3", 6, 14)
    assert (cfg.run.name, cfg.partitions[2].size) != ("trial_3", 6)  # the original is left as it is
    with pytest.raises(ConfigError, match=r"objective.betaa: unknown key \(did you mean 'beta'\?\)"):
        cfg.replace({"objective.betaa": 2.0})
    with pytest.raises(ConfigError, match=r"partitions.7.size: index 7 is out of range: partitions has 3 entries"):
        cfg.replace({"partitions.7.size": 2})
    with pytest.raises(ConfigError, match="partitions: sizes add up to"):  # validated, not just set
        cfg.replace({"partitions.2.size": 5})
