"""report.md and curves.png: what a person looks at before reading numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..rundir import atomic_open, atomic_write_text, read_jsonl

MD_METRICS = ["ndcg@10", "recall@10", "map@10", "precision@10", "ndcg@1", "recall@100"]


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def _cell(scores: dict[str, Any], m: str) -> str:
    """A mean with its 95% bootstrap interval when the report has one."""
    ci = (scores.get("ci95") or {}).get(m)
    return _fmt(scores.get(m)) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _diff(ds: dict[str, Any], m: str) -> str:
    """Tuned minus base, with the paired 95% interval (the same queries, resampled together)."""
    p = (ds.get("tuned_minus_base") or {}).get(m)
    if p:
        return f"{p['diff']:+.4f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
    if "tuned" not in ds or "base" not in ds or ds["tuned"].get(m) is None or ds["base"].get(m) is None:
        return "-"
    return f"{ds['tuned'][m] - ds['base'][m]:+.4f}"


# report.md warns of a hub when the tuned model's is in this share of the queries and twice the base's count
HUB_WARN_SHARE = 0.1


def _hub_lines(hubs: dict[str, Any], n: int) -> list[str]:
    """The most frequent passage that answers none of the queries it is shown to, per model; a warning when
    tuning made one far more frequent than the base's (generic training queries pull a passage toward all)."""
    if "tuned" not in hubs or "base" not in hubs:
        return []
    t, b = hubs["tuned"], hubs["base"]
    lines = [f"Most frequent passage in the top 10 that answers none of those queries: tuned `{t['passage']}` in "
             f"{t['queries']} of {n} queries, base `{b['passage']}` in {b['queries']}.", ""]
    if t["queries"] >= max(2 * b["queries"], HUB_WARN_SHARE * n, 2):
        lines += [f"**Hub:** tuning pulled one passage into {t['queries']} of {n} queries' top 10 "
                  f"(\"{' '.join(t.get('text', '').split())[:120]}\"). Its training queries: "
                  + ("; ".join(f"\"{q}\"" for q in t.get("train_queries", [])[:8]) or "none")
                  + ". Generic queries (the domain's name, a bare title) do this; `synth.structure.generic_headings` "
                  "skips such headings; `train.symmetric=1` pushes a passage away from queries not its own (on "
                  "Debian it shrank the largest hub a little, nDCG unchanged: configs/train/default.yaml).", ""]
    return lines


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    g = report["gate"]
    lines = ["# Evaluation report", ""]
    verdict = "PASSED" if g["passed"] else "FAILED"
    lines += [f"**Quality gate: {verdict}** -- {g['reason']}", ""]
    if g.get("warnings"):
        lines += ["**Warnings:**", ""] + [f"- {w}" for w in g["warnings"]] + [""]
    ep = report.get("endpoint")
    if ep:
        lines += [f"**Endpoint {ep['url']}: {'PASSED' if ep['passed'] else 'FAILED'}** -- max(1 - cosine) vs the "
                  f"checkpoint {ep['max_drift']:.2e} (tolerance {ep['tolerance']:.0e}) over {ep['texts_compared']} texts", ""]
    for name, ds in report["datasets"].items():
        systems = [s for s in ("base", "tuned", "bm25", "endpoint") if s in ds]
        info = ds.get("info", {})
        lines += [f"## {name}", "", f"{info.get('queries', '?')} queries, {info.get('corpus', '?')} passages "
                  f"(`{info.get('path', '')}`)", ""]
        lines += ["| metric | " + " | ".join(systems) + " | tuned - base (paired) |",
                  "|---|" + "---|" * (len(systems) + 1)]
        for m in MD_METRICS:
            lines.append(f"| {m} | " + " | ".join(_cell(ds[s], m) for s in systems) + f" | {_diff(ds, m)} |")
        lines.append("")
        p = (ds.get("tuned_minus_base") or {}).get("ndcg@10")
        if p:
            lines += [f"Each mean has its 95% bootstrap interval over the queries; tuned - base is paired. On nDCG@10 "
                      f"the tuned model wins {p['wins']} and loses {p['losses']} of {info.get('queries', '?')} queries"
                      + (" (an interval that includes 0 is not yet a gain)." if p["ci95"][0] <= 0 else "."), ""]
        lines += _hub_lines(ds.get("hubs") or {}, info.get("queries") or 0)
        groups = ds.get("by_group") or {}
        if groups:
            gsys = [s for s in ("base", "tuned", "bm25") if s in ds]
            lines += ["nDCG@10 by query source and type (what each source of synthetic queries contributes):", "",
                      "| source:type | queries | " + " | ".join(gsys) + " | tuned - base |",
                      "|---|---|" + "---|" * (len(gsys) + 1)]
            for g, gd in groups.items():
                lines.append(f"| {g} | {gd['queries']} | " + " | ".join(_fmt(gd[s].get("ndcg@10")) for s in gsys)
                             + f" | {_diff(gd, 'ndcg@10')} |")
            lines.append("")
    lines += ["All metrics at k in " + ", ".join(str(k) for k in report.get("k_values", [])) + " are in report.json. "
              "Curves: curves.png.", ""]
    atomic_write_text(path, "\n".join(lines))


def write_curves(path: Path, report: dict[str, Any], metrics_jsonl: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = list(read_jsonl(metrics_jsonl)) if metrics_jsonl.is_file() else []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    names = list(report["datasets"])
    systems = [s for s in ("bm25", "base", "tuned") if any(s in report["datasets"][n] for n in names)]
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(names))
    colors = {"bm25": "#999999", "base": "#4c72b0", "tuned": "#dd8452"}
    for i, s in enumerate(systems):
        vals = [report["datasets"][n].get(s, {}).get("ndcg@10", 0.0) for n in names]
        bars = ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=s, color=colors[s])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("nDCG@10")
    ax.set_ylim(0, 1.05)
    ax.set_title("retrieval quality (higher is better)")
    ax.legend(loc="lower right")
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_ndcg@10"]) for r in rows if "val_ndcg@10" in r]
    ax = axes[1]
    if loss:
        ax.plot(*zip(*loss), color="#dd8452")
    else:
        ax.text(0.5, 0.5, "no training log", ha="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("training loss")
    ax = axes[2]
    if val:
        ax.plot(*zip(*val), marker="o", color="#55a868")
        ax.axhline(val[0][1], ls="--", color="#4c72b0", label="base (step 0)")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no validation log", ha="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("validation nDCG@10")
    ax.set_title("validation (held-out slice of training docs)")
    fig.tight_layout()
    with atomic_open(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
