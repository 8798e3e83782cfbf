"""What an MLflow run is owed after a tracking outage: recorded in the run directory, settled later.

A tracking server that dies mid-run does not stop training (:mod:`gvae_dist.tracking` turns the
tracker into a no-op after one warning), but the run it left behind would show ``RUNNING`` forever
and lack the metrics of every later log step. So the tracker records what it could not send in
``<run_dir>/tracking_pending.json``: per MLflow run id, the steps whose metrics did not arrive and
the terminal status it could not set. Never the tracking URI's credentials: the file holds the
redacted URI, for the reader only.

Settling sends the missing steps from ``metrics.jsonl`` (the rows the loop wrote, the same dicts
it handed the tracker), each step once: points the server already holds for a key are not sent
again (a batch may have reached the server before the connection broke). Then it sets the status
and removes the file. ``gvae-dist train`` settles before it trains when it finds the file (so
re-running the same command settles a finished run), ``gvae-dist tracking sync RUN_DIR`` without
training. A settle that fails keeps the file (less what was settled) for the next try.

Not recovered: eval/* metrics, artifacts and the logged model of the outage (they are in the run
directory: ``eval*/``, ``metrics.json``, ``model/``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gvae_dist.config import redact_uri

log = logging.getLogger("gvae_dist.tracking")

__all__ = ["PENDING_FILE", "owe", "read_pending", "settle", "settle_run_dir"]

PENDING_FILE = "tracking_pending.json"
_ABOUT = (
    "what these MLflow runs did not receive while the tracking server was out of reach; sent (then "
    "this file removed) by the next `gvae-dist train` of this run directory or by "
    "`gvae-dist tracking sync <run dir>`"
)


def read_pending(run_dir: str | Path) -> dict[str, Any] | None:
    """The parsed pending file of ``run_dir``, None when nothing is owed."""
    path = Path(run_dir) / PENDING_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write(run_dir: Path, data: dict[str, Any]) -> None:
    path = run_dir / PENDING_FILE
    if not data["runs"]:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)  # a crash mid-write leaves the old file, never a torn one


def owe(run_dir: str | Path, run_id: str, uri: str, steps: list[int] = (), status: str | None = None) -> Path:
    """Add ``steps`` (and the terminal ``status``, if given) to what ``run_id`` is owed; returns the file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = read_pending(run_dir) or {"about": _ABOUT, "runs": {}}
    data["tracking_uri"] = redact_uri(uri)
    debt = data["runs"].setdefault(run_id, {"status": None, "steps": []})
    debt["steps"] = sorted(set(debt["steps"]) | {int(s) for s in steps})
    if status is not None:
        debt["status"] = status
    _write(run_dir, data)
    return run_dir / PENDING_FILE


def _metric_rows(run_dir: Path) -> dict[int, dict[str, float]]:
    """``metrics.jsonl`` by step (the last row of a step wins; torn lines are skipped)."""
    path = run_dir / "metrics.jsonl"
    rows: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
            rows[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):
            continue
    return rows


def mlflow_metric_name(key: str) -> str | None:
    """The name a ``metrics.jsonl`` key has in MLflow (None: not sent). Evaluation (``eval/*``)
    and run events (``run/*``) keep theirs; every training metric goes under ``train/``
    (``loss`` -> ``train/loss``, ``kl/pose`` -> ``train/kl/pose``). The MLflow run page makes
    one chart section per prefix, sorted by name, and puts unprefixed metrics in a last section:
    this way the loss curves open the ``train`` sections instead of sitting below ~40 charts.
    ``step`` is MLflow's own axis, not a metric."""
    if key == "step":
        return None
    return key if key.startswith(("eval/", "run/", "train/")) else f"train/{key}"


def mlflow_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` under their MLflow names (:func:`mlflow_metric_name`)."""
    out = {}
    for key, value in metrics.items():
        name = mlflow_metric_name(key)
        if name is not None:
            out[name] = value
    return out


def settle(client, run_dir: str | Path) -> list[str]:
    """Send what ``run_dir``'s pending file owes through ``client`` (an ``MlflowClient``) and remove
    the file; returns one description per run settled. Raises on the first failure, the file
    then holding only the runs not yet settled."""
    from mlflow.entities import Metric

    run_dir = Path(run_dir)
    data = read_pending(run_dir)
    if data is None:
        return []
    rows, done = {s: mlflow_metrics(r) for s, r in _metric_rows(run_dir).items()}, []
    for run_id, debt in list(data["runs"].items()):
        steps = [s for s in debt["steps"] if s in rows]
        keys = sorted({k for s in steps for k in rows[s]})
        held = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, s) for s in steps for k, v in rows[s].items() if s not in held[k]]
        for i in range(0, len(items), 500):
            client.log_batch(run_id, items[i : i + 500])
        if debt["status"] is not None:
            client.set_terminated(run_id, debt["status"])
        sent = sorted({m.step for m in items})
        done.append(
            f"MLflow run {run_id}: sent {len(items)} metric point(s) of {len(sent)} step(s)"
            + (f" ({sent[0]}..{sent[-1]})" if sent else "")
            + (f", status {debt['status']}" if debt["status"] else ", status left as it is")
        )
        del data["runs"][run_id]
        _write(run_dir, data)
    return done


def settle_run_dir(client, uri: str, run_dir: str | Path) -> bool:
    """Settle ``run_dir`` with ``client`` (``gvae_dist.tracking.mlflow_client(uri)``; ``uri`` only
    names the store in messages), one line printed per run settled; True when nothing is owed any
    more. A failure is one warning line, the file kept for the next try."""
    run_dir = Path(run_dir)
    if not (run_dir / PENDING_FILE).is_file():
        return True
    try:
        for line in settle(client, run_dir):
            print(f"[gvae-dist] {line} (owed since a tracking outage; {PENDING_FILE} settled)", flush=True)
        return True
    except Exception as exc:  # the server may still be down: training goes on, the debt stays
        log.warning(
            "[gvae-dist] warning: could not settle %s with %s (%s: %s); kept for the next "
            "`gvae-dist train` of this run directory or `gvae-dist tracking sync %s`",
            run_dir / PENDING_FILE,
            redact_uri(uri),
            type(exc).__name__,
            redact_uri(str(exc)).splitlines()[0][:300] if str(exc) else "",
            run_dir,
        )
        return False
