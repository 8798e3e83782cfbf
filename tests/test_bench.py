"""The benchmarks execute in CI-sized form and produce well-formed output (not their speed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gate_and_step_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "ops/bench/run.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {r["name"] for r in report["gate"]} == {"fused", "plain", "naive"}
    assert all(r["us_per_fwd_bwd"] > 0 and r["saved_bytes"] > 0 for r in report["gate"])
    names = [r["name"] for r in report["step"]]
    assert "plain" in names and any("/gated/" in n for n in names) and any("/ungated/" in n for n in names)
    assert all(r["images_per_s"] > 0 for r in report["step"])
    shares = {r["name"]: r["share_of_step"] for r in report["share"]}
    assert set(shares) >= {"reg/beta", "reg/infovae", "reg/dip2", "gate/fused"}
    assert all(0 < s < 1 for s in shares.values())
    assert "vs plain" in proc.stdout
