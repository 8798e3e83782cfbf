"""The single-process train loop: runs, checkpoints, resumes to the same numbers."""

import json

import pytest
import torch

from gvae_dist.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from gvae_dist.config import load_config
from gvae_dist.eval_runner import eval_steps
from gvae_dist.train import train_loop

TINY = [
    "data.num_train=512",
    "data.num_eval=400",
    "data.image_size=32",
    "optim.batch_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "run.log_every=5",
    "eval.at_end=false",
    "tracking.enabled=false",
    "run.threads=1",
]


def _cfg(tmp_path, *extra):
    return load_config(None, [*TINY, f"run.output_dir={tmp_path}", *extra])


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {int(r["step"]): r["loss"] for r in rows}  # a resumed run re-logs: keep the last
    return [by_step[s] for s in sorted(by_step)]


def test_loss_decreases_and_checkpoints_rotate(tmp_path):
    result = train_loop(
        _cfg(tmp_path, "optim.steps=30", "run.checkpoint_every=10", "run.keep_checkpoints=2", "optim.lr=0.002")
    )
    losses = _losses(result.run_dir)
    assert len(losses) == 6 and losses[-1] < losses[0]
    ckpts = list_checkpoints(result.run_dir / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000020", "step_00000030"]
    state = load_checkpoint(ckpts[-1])
    assert state["step"] == 30 and set(state) >= {"model", "optimizer", "rng", "data", "tracking_run_id"}
    assert (result.run_dir / "config.yaml").is_file()


@pytest.mark.parametrize("objective", ["beta", "infovae", "dip2", "dip1"])
def test_resume_reproduces_uninterrupted_losses(tmp_path, objective):
    common = [f"objective.name={objective}", "run.checkpoint_every=10", "pairing.transform=0.2"]
    full = train_loop(_cfg(tmp_path / "full", "optim.steps=20", *common))
    train_loop(_cfg(tmp_path / "split", "optim.steps=10", *common))
    resumed = train_loop(_cfg(tmp_path / "split", "optim.steps=20", *common))
    assert resumed.step == 20
    # CPU kernels are deterministic here; allow float reordering noise only
    torch.testing.assert_close(_losses(resumed.run_dir), _losses(full.run_dir), rtol=1e-5, atol=1e-4)


def test_regulariser_warmup_ramps_and_changes_the_run(tmp_path):
    """objective.warmup_steps: the logged weight ramps to 1, and the steps differ from a run
    without it (the KL weighs less early) while the first reconstruction is the same."""
    common = ["optim.steps=10", "run.log_every=1", "run.checkpoint_every=10", "objective.name=infovae"]
    warm = train_loop(_cfg(tmp_path / "w", *common, "objective.warmup_steps=4"))
    plain = train_loop(_cfg(tmp_path / "p", *common))
    rows = [json.loads(line) for line in (warm.run_dir / "metrics.jsonl").read_text().splitlines()]
    weights = [r["objective/warmup_weight"] for r in rows if "objective/warmup_weight" in r]
    assert weights == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    plain_rows = [json.loads(line) for line in (plain.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "objective/warmup_weight" not in plain_rows[0]
    assert rows[0]["recon"] == pytest.approx(plain_rows[0]["recon"], rel=1e-6)
    recon = rows[0]["recon"]  # the first step weighs a quarter of the regulariser
    assert rows[0]["loss"] - recon == pytest.approx(0.25 * (plain_rows[0]["loss"] - recon), rel=1e-3, abs=1e-3)
    assert plain_rows[0]["loss"] != pytest.approx(rows[0]["loss"], abs=0.5)
    assert _losses(warm.run_dir)[-1] != pytest.approx(_losses(plain.run_dir)[-1], rel=1e-6)


def test_drop_high_loss_drops_that_share_of_the_shared_factor_pairs(tmp_path):
    common = [
        "optim.steps=4",
        "run.log_every=4",
        "run.checkpoint_every=4",
        "pairing.identity=0.5",
        "pairing.shared_factor=0.5",
        "gate.drop_high_loss=0.5",
    ]
    gated = train_loop(_cfg(tmp_path / "g", *common)).metrics
    # half of the shared-factor pairs (about half of the batch) lose their gradient
    assert 0.15 <= gated["gate/dropped_fraction"] <= 0.35, gated["gate/dropped_fraction"]
    ungated = train_loop(_cfg(tmp_path / "u", *common, "gate.enabled=false")).metrics
    assert "gate/dropped_fraction" not in ungated  # the un-gated baseline reads no gate option


def test_gated_and_ungated_differ_only_through_the_gate(tmp_path):
    gated = train_loop(_cfg(tmp_path / "g", "optim.steps=5", "gate.enabled=true"))
    ungated = train_loop(_cfg(tmp_path / "u", "optim.steps=5", "gate.enabled=false"))
    g = load_checkpoint(latest_checkpoint(gated.run_dir / "checkpoints"))["model"]
    u = load_checkpoint(latest_checkpoint(ungated.run_dir / "checkpoints"))["model"]
    # the decoder sees the same targets; the encoder heads receive different gradients
    assert not torch.equal(g["encoder.mu_head.weight"], u["encoder.mu_head.weight"])
    # KL un-gated: each partition's effective beta is beta over the share of examples that open it
    beta, m = 4.0, gated.metrics
    shares = {p: m[f"gate/open_share/{p}"] for p in ("pose", "expression", "rest")}
    assert 0.0 < shares["rest"] < shares["pose"] < 1.0, shares
    for p, share in shares.items():
        assert m[f"gate/effective_beta/{p}"] == pytest.approx(beta / share)
    assert all(ungated.metrics[f"gate/open_share/{p}"] == 1.0 for p in shares)
    assert all(ungated.metrics[f"gate/effective_beta/{p}"] == beta for p in shares)
    kl_gated = train_loop(_cfg(tmp_path / "k", "optim.steps=5", "gate.enabled=true", "gate.kl=true"))
    assert kl_gated.metrics["gate/open_share/rest"] == pytest.approx(shares["rest"])
    assert all(kl_gated.metrics[f"gate/effective_beta/{p}"] == beta for p in shares)


def test_gated_beta_preset_trains_every_partition_at_its_beta(tmp_path):
    """Study v21: the gated beta preset gates its KL too, so no partition runs at a higher
    effective beta than the un-gated twin (with the KL un-gated, ``rest`` would run at ~2x)."""
    from pathlib import Path

    preset = Path(__file__).resolve().parents[1] / "configs" / "faces_beta_gated.yaml"
    cfg = load_config(preset, [*TINY, "optim.steps=5", f"run.output_dir={tmp_path}"])
    m = train_loop(cfg).metrics
    for p in ("pose", "expression", "rest"):
        assert 0.0 < m[f"gate/open_share/{p}"] < 1.0, p
        assert m[f"gate/effective_beta/{p}"] == pytest.approx(cfg.objective.beta), p
    # the presets that extend it keep the setting their studies measured (v21 ran beta-VAE only)
    for other in ("faces_dip2_gated.yaml", "faces_infovae_gated.yaml"):
        assert load_config(preset.parent / other).gate.kl is False, other


def test_evaluation_points_spread_over_the_run_at_log_steps(tmp_path):
    def steps(*extra):
        return sorted(eval_steps(_cfg(tmp_path, "eval.at_end=true", *extra)))

    assert steps("optim.steps=3000", "run.log_every=100") == [600, 1200, 1800, 2400]
    assert steps("optim.steps=1000", "run.log_every=100", "eval.points=2") == [300, 700]
    assert steps("optim.steps=10", "run.log_every=50") == []  # no log step before the end
    assert steps("optim.steps=1000", "run.log_every=100", "eval.points=0") == []
    assert steps("optim.steps=1000", "run.log_every=100", "eval.at_end=false") == []
    # eval.every overrides the points (Tune's reports rely on it)
    assert steps("optim.steps=1000", "run.log_every=100", "eval.every=250") == [250, 500, 750]


@pytest.mark.parametrize(
    "extra",
    [
        ["pairing.partner=dataset", "gate.closed_code=target", "gate.decoder=false"],
        ["pairing.partner=rendered", "pairing.match=one"],
        ["pairing.partner=batch", "pairing.match_nuisance=true", "pairing.min_found=0.99"],
    ],
)
def test_partner_sources_and_gate_choices_train(tmp_path, extra, caplog):
    result = train_loop(_cfg(tmp_path, "optim.steps=5", *extra))
    m = result.metrics
    found = {k: m[k] for k in ("pairing/found/pose", "pairing/found/expression")}
    if "pairing.partner=batch" in extra:  # 32 examples, all nine labels must match: no partner
        assert max(found.values()) < 0.2 and "pairing.match: one" in caplog.text
    else:
        assert min(found.values()) > 0.9
    assert m["recon/shared_factor"] > 0 and m["loss"] == m["loss"]


def test_bf16_autocast_trains(tmp_path):
    result = train_loop(_cfg(tmp_path, "optim.steps=5", "optim.mixed_precision=bf16"))
    assert torch.isfinite(torch.tensor(result.metrics["loss"]))


def test_failed_run_leaves_last_checkpoint_intact(tmp_path):
    cfg = _cfg(tmp_path, "optim.steps=10", "run.checkpoint_every=5")
    result = train_loop(cfg)
    before = load_checkpoint(result.checkpoint)["model"]
    # a diverging continuation (absurd lr, forced past the config check) must fail with a clear
    # error and keep step 10
    with (
        pytest.raises(FloatingPointError, match="last good checkpoint"),
        pytest.warns(RuntimeWarning, match=r"run.resume: force.*optim.lr: 0.0001 there, 1000000.0 here"),
    ):
        train_loop(_cfg(tmp_path, "optim.steps=400", "run.checkpoint_every=1000", "optim.lr=1e6", "run.resume=force"))
    after = load_checkpoint(latest_checkpoint(result.run_dir / "checkpoints"))
    assert after["step"] == 10
    assert all(torch.equal(before[k], after["model"][k]) for k in before)


def test_periodic_and_final_evaluation_reach_the_checkpoint_reports(tmp_path):
    """eval.every + at_end: each evaluation runs before its step's checkpoint, so the report
    (checkpoint meta, what Ray Tune sees) carries eval/*; rerunning a finished run keeps the
    final evaluation."""
    cfg = _cfg(
        tmp_path,
        "optim.steps=10",
        "run.checkpoint_every=5",
        "eval.every=5",
        "eval.at_end=true",
        "eval.num_train=100",
        "eval.num_test=100",
        "run.keep_checkpoints=3",
    )
    result = train_loop(cfg)
    run = result.run_dir
    assert (run / "eval_step_5" / "metrics.json").is_file() and (run / "eval" / "traversals.png").is_file()
    assert not list((run / "eval_step_5").glob("*.png"))  # evaluations during training draw nothing
    during = json.loads((run / "eval_step_5" / "metrics.json").read_text())
    assert during["details"]["n_train"] + during["details"]["n_test"] == 200
    for step in (5, 10):
        meta = json.loads((run / "checkpoints" / f"step_{step:08d}" / "meta.json").read_text())["metrics"]
        assert 0.0 <= meta["eval/dci_mean"] <= 1.0 and meta["eval/neg_elbo"] > 0, meta
    final = json.loads((run / "metrics.json").read_text())
    assert final["eval"]["neg_elbo"] == pytest.approx(final["eval"]["recon"] + final["eval"]["kl"])
    ev = final["eval"]
    # headline DCI over the 6 targeted factors, every factor as all/*, one score per factor
    assert ev["targeted_factors"] == ["yaw", "pitch", "roll", "mouth", "eyes", "brow"]
    assert ev["dci_mean"] == pytest.approx((ev["disentanglement"] + ev["completeness"] + ev["informativeness"]) / 3)
    assert 0.0 <= ev["all/dci_mean"] <= 1.0 and ev["informativeness_measures"]["yaw"] == "1-nrmse"
    assert ev["informativeness"] == pytest.approx(sum(ev[f"informativeness/{f}"] for f in ev["targeted_factors"]) / 6)
    assert ev["purity_mean"] == pytest.approx((ev["purity/pose"] + ev["purity/expression"]) / 2)
    assert not any(k.startswith("eval/") for k in final["train"])
    again = train_loop(cfg)  # nothing left to train: evaluates the restored model once more
    assert again.step == 10 and again.eval_metrics["dci_mean"] == pytest.approx(result.eval_metrics["dci_mean"])


def test_stream_seeds_are_distinct_per_purpose_and_rank():
    """Rank r+1's pairing stream used to start where rank r's noise stream did; now every
    (purpose, rank) has its own seed, and rank 0 keeps the seeds single-process runs had."""
    from gvae_dist.train import STREAMS, stream_seed

    seeds = [stream_seed(7, p, r) for r in range(64) for p in STREAMS]
    assert len(set(seeds)) == len(seeds)
    assert (stream_seed(7, "pairing", 0), stream_seed(7, "noise", 0)) == (7000, 7001)
    assert stream_seed(7, "pairing", 1) != stream_seed(7, "noise", 0)
