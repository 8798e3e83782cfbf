"""The benchmarks run in their CI-sized (--quick) form and produce well-formed output.

Speed is not asserted here (2 shared cores are far too noisy for that); the structure of the
rows, the JSON report, the targets and the printed table are.
"""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gvae_dist import bench
from gvae_dist.bench.harness import Timings, interleave, saved_tensor_bytes
from gvae_dist.bench.step import GATE_DEFAULTS, OBJECTIVE_DEFAULTS, GvaeStep, StepSpec
from gvae_dist.config import GateConfig, ObjectiveConfig

REPO = Path(__file__).resolve().parents[1]


def _finite_positive(row, *keys):
    for key in keys:
        assert isinstance(row[key], float | int) and math.isfinite(row[key]) and row[key] > 0, (key, row)


def _quick(suite):
    report = bench.run([suite], quick=True)
    json.dumps(report)  # serialisable as written by `gvae-dist bench`
    rows = report["results"]
    assert rows and all(r["suite"] == suite for r in rows)
    assert not [r for r in rows if r["name"] == "error"], rows
    assert f"== {suite}" in bench.format_table(report)
    return report


def test_timings_ratio_is_the_median_of_per_round_ratios():
    t = Timings({"a": [1.0, 2.0, 4.0], "b": [2.0, 2.0, 2.0]})
    assert t.ratio("a", "b") == 1.0  # rounds: 2/1, 2/2, 2/4 -> median 1
    assert t.median("a") == 2.0


def test_interleave_runs_every_variant_every_round():
    calls = {"x": 0, "y": 0}

    def make(k):
        return lambda: calls.__setitem__(k, calls[k] + 1)

    t = interleave({"x": make("x"), "y": make("y")}, rounds=4, warmup=1)
    assert calls == {"x": 5, "y": 5} and all(len(v) == 4 for v in t.seconds.values())


def test_saved_tensor_bytes_counts_what_backward_keeps():
    x = torch.randn(8, 4, requires_grad=True)
    assert saved_tensor_bytes(lambda: (x * x).sum()) == 8 * 4 * 4  # mul saves x (one storage)


def test_objective_defaults_match_the_config():
    cfg = ObjectiveConfig()
    assert {k: getattr(cfg, k) for k in OBJECTIVE_DEFAULTS} == OBJECTIVE_DEFAULTS
    gate = GateConfig()
    assert {k: getattr(gate, k) for k in GATE_DEFAULTS} == GATE_DEFAULTS


def test_bench_step_matches_train_loop_defaults():
    """The benchmarked step is the default configuration (a config change must show up here)."""
    from gvae_dist.config import Config

    cfg, spec = Config(), StepSpec()
    assert (spec.batch, spec.objective, spec.gated) == (cfg.optim.batch_size, cfg.objective.name, cfg.gate.enabled)
    assert spec.precision == {"no": "fp32"}.get(cfg.optim.mixed_precision, cfg.optim.mixed_precision)
    assert (spec.compile, spec.channels_last) == (cfg.optim.compile, cfg.optim.channels_last)
    assert cfg.model.latent_dim == 10 and list(cfg.model.channels) == [32, 32, 64, 64]


def test_gvae_step_trains():
    step = GvaeStep(StepSpec(batch=8), "cpu")
    before = [p.detach().clone() for p in step.model.parameters()]
    step()
    assert all(torch.isfinite(v).all() for v in step.metrics.sums.values())
    assert any(not torch.equal(b, p) for b, p in zip(before, step.model.parameters()))
    metrics = step.metrics.flush(1)
    assert {"loss", "recon", "kl", "gate/open_fraction", "kl/pose", "recon/identity"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())


def test_the_benchmarked_step_is_the_train_loops_step(monkeypatch):
    """No copy of the step to keep in line: the benchmark and train_loop call the one
    ``gvae_dist.step.train_step`` and sum its metrics with the one ``StepMetrics``."""
    import gvae_dist.bench.step as bench_step
    import gvae_dist.step
    import gvae_dist.train

    for name in ("train_step", "StepMetrics", "StepParts"):
        assert getattr(bench_step, name) is getattr(gvae_dist.step, name) is getattr(gvae_dist.train, name)
    calls = []
    real = gvae_dist.step.train_step
    monkeypatch.setattr(bench_step, "train_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    step = GvaeStep(StepSpec(batch=8), "cpu")
    step()
    assert calls == [1] and step.metrics.count == 1


def test_gate_suite_quick():
    rows = _quick("gate")["results"]
    assert {r["name"] for r in rows} == {"fused", "plain", "naive"}
    for r in rows:
        _finite_positive(r, "us_per_fwd_bwd", "naive_over_this", "plain_over_this", "saved_bytes")
    by = {(r["name"], r["latent"]): r for r in rows}
    # the fused Function saves what the naive composition saves, no more
    assert by[("fused", 64)]["saved_bytes"] <= by[("naive", 64)]["saved_bytes"]


def test_step_suite_quick():
    report = _quick("step")
    rows = report["results"]
    assert "plain" in {r["name"] for r in rows}
    for r in rows:
        _finite_positive(r, "images_per_s", "ms_per_step", "speedup_vs_base", "speedup_vs_plain")
    gated = [r for r in rows if r["name"].startswith("beta/B8/gated/fp32")][0]
    assert isinstance(gated["gate_overhead"], float)
    assert any(t["target"].startswith("gated vs un-gated") for t in report["targets"])


def test_share_suite_quick():
    rows = _quick("share")["results"]
    assert {r["name"] for r in rows} >= {"reg/beta", "reg/infovae", "reg/dip2", "gate/fused"}
    for r in rows:
        _finite_positive(r, "ms", "step_ms", "share_of_step")


@pytest.mark.slow
def test_vs_plain_suite_quick():
    (row,) = _quick("vs_plain")["results"]
    _finite_positive(row, "plain_images_per_s", "gvae_images_per_s", "speedup_vs_plain")
    assert 0 <= row["data_wait_fraction"] < 1 and row["target"] == 2.0


@pytest.mark.slow
def test_e2e_suite_quick():
    rows = _quick("e2e")["results"]
    assert {r["name"] for r in rows} == {"memory", "shards"}
    for r in rows:
        _finite_positive(r, "images_per_s")
        assert 0 <= r["data_wait_fraction"] < 1


@pytest.mark.slow
def test_precision_suite_quick():
    (row,) = _quick("precision")["results"]
    assert len(row["fp32_losses"]) == len(row["bf16_losses"]) >= 2
    assert math.isfinite(row["max_rel_diff"]) and isinstance(row["within_tolerance"], bool)


@pytest.mark.slow
@pytest.mark.integration
def test_scaling_suite_quick(tmp_path, ray_env):
    # In a subprocess, as `gvae-dist bench` runs it: the suite starts and stops private local Ray
    # clusters, and this pytest process keeps at most one Ray connection at a time.
    out = tmp_path / "scaling.json"
    proc = subprocess.run(
        [sys.executable, "-m", "gvae_dist.bench", "--quick", "--suite", "scaling", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== scaling" in proc.stdout
    rows = json.loads(out.read_text())["results"]
    assert rows and all(r["suite"] == "scaling" for r in rows)
    assert not [r for r in rows if r["name"] == "error"], rows
    assert [r["workers"] for r in rows] == [0, 1, 2]
    for r in rows:
        _finite_positive(r, "images_per_s")


def test_cli_bench_writes_json_and_table(tmp_path, capsys):
    from gvae_dist.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", "--quick", "--suite", "gate", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"meta", "results", "targets"} and report["meta"]["quick"] is True
    assert {"target", "value", "goal", "met"} <= set(report["targets"][0])
    assert "== gate" in capsys.readouterr().out


def test_failing_suite_is_reported_not_raised(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("no backend")

    monkeypatch.setattr(bench, "_suite", boom)
    report = bench.run(["gate"], quick=True)
    assert report["results"] == [{"suite": "gate", "name": "error", "error": "RuntimeError: no backend"}]


@pytest.mark.slow
def test_gpu_script_runs_with_only_pytorch(tmp_path):
    """ops/bench/gpu_bench.py on CPU with the rest of the stack made unimportable."""
    out = tmp_path / "g.json"
    blocker = (
        "import sys, runpy\n"
        "for m in ['yaml', 'accelerate', 'ray', 'mlflow', 'numpy', 'nvidia', 'webdataset',"
        " 'sklearn', 'scipy', 'PIL', 'h5py']:\n"
        "    sys.modules[m] = None\n"
        f"sys.argv = ['gpu_bench.py', '--device', 'cpu', '--quick', '--out', {str(out)!r}]\n"
        "runpy.run_path('ops/bench/gpu_bench.py', run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    steps = [r for r in report["results"] if r["suite"] == "step"]
    assert steps and all(r["flops_per_step"] > 0 and r["achieved_tflops"] > 0 for r in steps)
    assert {r["suite"] for r in report["results"]} == {"gate", "step"}
    assert "TFLOP/s" in proc.stdout


def test_step_flops_match_the_analytic_count():
    """FlopCounter's count equals the hand count of the 64x64 reference net (fwd + bwd)."""
    from gvae_dist.bench.step import step_flops

    B = 2
    # encoder convs (out pixels x out ch x in ch x 16 taps), dense layers, decoder deconvs
    conv = [(32 * 32, 32, 3), (16 * 16, 32, 32), (8 * 8, 64, 32), (4 * 4, 64, 64)]
    macs = sum(p * co * ci * 16 for p, co, ci in conv)
    macs += 1024 * 256 + 2 * 256 * 10 + 10 * 256 + 256 * 1024
    deconv = [(4 * 4, 64, 64), (8 * 8, 64, 32), (16 * 16, 32, 32), (32 * 32, 32, 3)]  # in px, in, out
    macs += sum(p * ci * co * 16 for p, ci, co in deconv)
    fwd = 2 * macs * B
    # backward: weight grads for every layer, input grads for all but the first conv
    first = 32 * 32 * 32 * 3 * 16 * 2 * B
    assert step_flops(dataclasses.replace(StepSpec(), batch=B)) == fwd + (2 * fwd - first)


@pytest.mark.slow
def test_ops_bench_run_script_quick(tmp_path):
    """ops/bench/run.py (the PyTorch-only suites, from a checkout) still runs and reports."""
    out = tmp_path / "core.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "ops/bench/run.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {r["suite"] for r in report["results"]} == {"gate", "step", "share"}
    assert "speedup_vs_plain" in proc.stdout


@pytest.mark.parametrize("mask_kind", ["binary", "fractional"])
def test_compiled_gate_path_matches_the_function(mask_kind):
    """Under torch.compile gated_reparameterize takes its composition path (faster there):
    same values and the same gradients as the fused Function, for any mask."""
    from gvae_dist.gate import gated_reparameterize

    g = torch.Generator().manual_seed(0)
    mu, logvar, eps = (torch.randn(16, 10, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(16, 10, generator=g, dtype=torch.float64)
    mask = (mask < 0.5).double() if mask_kind == "binary" else mask
    w_dec, w_reg = (
        torch.randn(16, 10, generator=g, dtype=torch.float64),
        torch.randn(16, 10, generator=g, dtype=torch.float64),
    )

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (mu, logvar, eps)]
        z_dec, z_reg = fn(*leaves, mask)
        ((z_dec * w_dec).sum() + (z_reg * w_reg).sum()).backward()
        return [z_dec.detach(), z_reg.detach()] + [t.grad for t in leaves]

    eager = run(gated_reparameterize)
    compiled = run(torch.compile(gated_reparameterize, backend="aot_eager", fullgraph=True))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_retain_freed_memory_stops_refaulting_freed_blocks():
    """After train.retain_freed_memory(), a freed 64 MB block is reused without page faults."""
    import platform
    import resource

    from gvae_dist.train import retain_freed_memory

    if not retain_freed_memory():
        assert platform.libc_ver()[0] != "glibc", "mallopt is available on glibc and must apply"
        pytest.skip("not glibc: retain_freed_memory() is a documented no-op here")

    def churn():
        torch.ones(16 * 2**20)  # 64 MB, touched, then freed

    for _ in range(5):  # the heap settles after a few rounds (small objects land between blocks)
        churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        churn()
    per_call = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    assert per_call < 2000, per_call  # glibc's default mmaps each block afresh: 16384 faults


def test_dci_cost_script_times_every_method(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("dci_cost", REPO / "ops" / "bench" / "dci_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "dci.json"
    assert (
        mod.main(["--n-train", "300", "--n-test", "100", "--method", "gbt", "--method", "lasso", "--out", str(out)])
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["gbt", "lasso"]
    assert all(r["seconds"] > 0 and 0.0 <= r["disentanglement"] <= 1.0 for r in rows)
    # --probe: the flexible probe as shipped and one factor at a time, each against the trees
    assert mod.main(["--n-train", "300", "--n-test", "100", "--method", "gbt", "--probe", "--out", str(out)]) == 0
    probes = [r for r in json.loads(out.read_text()) if "probe" in r]
    assert [r["probe"] for r in probes] == ["trees (gbt, baseline)", "probe, shipped", "probe, per factor"]
    assert probes[0]["ratio_to_trees"] == 1.0
    assert all(r["seconds"] > 0 and len(r["informativeness"]) == 6 for r in probes)
    # the codes mix the factors linearly: the shipped probe reads each of them
    assert min(probes[1]["informativeness"]) > 0.3, probes[1]
