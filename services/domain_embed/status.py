"""``domain-embed status``: where a run stands, stage by stage, by the same rule ``run`` uses to skip or rerun a
stage (:func:`rundir.freshness`), without running, locking or writing anything.

Each stage is one of:

* ``done``: its manifest vouches for its outputs under the current config (and, for evaluate, the gate's verdict);
* ``stale``: it finished once, but ``run`` would redo it, and why (config changed, an input changed, ...);
* ``started``: it has work in its folder but no manifest (killed or stopped): ``run`` resumes it;
* ``not run``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from .errors import UserError
from .rundir import Stage, freshness, producer_of, read_manifest

MANIFEST = "manifest.json"


def _recorded_extra(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The command-line inputs the stage last ran with (evaluate's --real-queries, ...): status judges the run
    as it was made, not as a bare command would remake it."""
    with contextlib.suppress(TypeError, ValueError):
        extra = json.loads((manifest or {}).get("extra") or "{}")
        if isinstance(extra, dict):
            return extra
    return {}


def _has_work(folder: Path) -> bool:
    with contextlib.suppress(OSError):
        return any(p.name not in (MANIFEST, ".lock") for p in folder.iterdir())
    return False


def _counts(manifest: dict[str, Any], n: int = 4) -> dict[str, Any]:
    """The first few numeric counts the stage recorded (chunks, pairs, steps, ...)."""
    nums = [(k, v) for k, v in (manifest.get("counts") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return dict(nums[:n])


def _gate(run_dir: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        gate = json.loads((run_dir / "evaluate" / "report.json").read_text()).get("gate")
        if isinstance(gate, dict):
            return gate
    return None


def stage_status(stage: Stage, run_dir: Path, cfg: Any, stages: dict[str, Stage]) -> dict[str, Any]:
    man = read_manifest(run_dir, stage.folder)
    row: dict[str, Any] = {"stage": stage.name, "state": "not run", "why": []}
    try:
        fresh = freshness(stage, run_dir, cfg, stages, _recorded_extra(man))
    except UserError as exc:  # an input is missing or was altered after its stage wrote it
        row["why"] = [str(exc)]
        if man is not None:
            row["state"] = "stale"
        elif _has_work(run_dir / stage.folder):
            row["state"] = "started"
        return row
    if man is None:
        row["state"] = "started" if _has_work(run_dir / stage.folder) else "not run"
        return row
    row.update(state="stale" if fresh.why else "done", why=fresh.why, finished_at=man.get("finished_at"),
               wall_time_s=man.get("wall_time_s"), counts=_counts(man))
    if stage.name == "evaluate" and (gate := _gate(run_dir)) is not None:
        row["gate"] = {k: gate.get(k) for k in ("passed", "dataset", "metric", "base", "tuned")}
    return row


def busy(run_dir: Path) -> str | None:
    """Who holds the run directory now (``rundir.run_dir_lock``), or None. Asked with a shared, non-blocking
    lock that is dropped at once."""
    import fcntl

    lock = run_dir / ".lock"
    if not lock.is_file():
        return None
    try:
        with open(lock) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return fh.read().strip() or "a process (pid unknown)"
            except OSError:
                return None  # a filesystem without locks: nothing to ask
            fcntl.flock(fh, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def _producers(stage: Stage, stages: dict[str, Stage]) -> set[str]:
    return {p.name for rel in stage.inputs if (p := producer_of(rel, stages)) is not None}


def run_status(run_dir: Path, cfg: Any, stages: dict[str, Stage]) -> dict[str, Any]:
    rows = [stage_status(st, run_dir, cfg, stages) for st in stages.values()]
    # a stage that is up to date now is redone once a stage it reads from reruns (its inputs change then)
    pending: set[str] = set()
    for st, row in zip(stages.values(), rows):
        upstream = sorted(_producers(st, stages) & pending)
        if row["state"] != "done" or upstream:
            pending.add(st.name)
        if row["state"] == "done" and upstream:
            row["after"] = upstream
    todo = next((r["stage"] for r in rows if r["state"] != "done"), None)
    return {"run_dir": str(run_dir), "busy": busy(run_dir), "stages": rows, "next": todo}


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _when(iso: str | None) -> str:
    return (iso or "")[:19].replace("T", " ")


def render(status: dict[str, Any]) -> str:
    run_dir = status["run_dir"]
    lines = [f"run {run_dir}"]
    if status["busy"]:
        lines.append(f"  busy: {status['busy']}")
    for r in status["stages"]:
        head = f"  {r['stage']:<9} {r['state']:<8}"
        if r["state"] in ("done", "stale") and r.get("finished_at"):
            head += f" {_when(r['finished_at'])}  {float(r.get('wall_time_s') or 0):7.1f}s"
        if r.get("counts"):
            head += "  " + ", ".join(f"{k}={_num(v)}" for k, v in r["counts"].items())
        if (g := r.get("gate")) is not None:
            verdict = "passed" if g.get("passed") else "FAILED"
            head += (f"  gate {verdict} on {g.get('dataset')}: {g.get('metric')} tuned {_num(g.get('tuned'))} vs base "
                     f"{_num(g.get('base'))}")
        lines.append(head)
        if r.get("after"):
            lines.append(f"            redone after {', '.join(r['after'])} (its inputs change then)")
        if r["state"] == "started":
            lines.append("            stopped before it finished; its saved work is kept and the next run resumes it")
        lines += [f"            {w}" for w in r["why"]]
    nxt = status["next"]
    if nxt is None:
        lines.append(f"every stage is up to date; serve it: domain-embed serve {run_dir}")
    else:
        lines.append(f"next: domain-embed run --run-dir {run_dir}  (runs {nxt} and the stages after it; "
                     f"finished stages that are up to date are skipped)")
    return "\n".join(lines)
