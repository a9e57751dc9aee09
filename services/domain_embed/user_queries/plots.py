"""One PNG for a drift report: length histograms, style mix, per-type closeness, and NN similarity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_drift(report: dict[str, Any], path: str | Path) -> Path:
    """Write the drift report's figure to ``path`` (PNG) atomically and return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..rundir import atomic_open

    e = report.get("embedding")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0, 0]
    h = report["histogram"]
    edges = np.asarray(h["bin_edges"], dtype=float)
    width = np.diff(edges)
    real = np.asarray(h["real"], dtype=float)
    synth = np.asarray(h["synthetic"], dtype=float)
    ax.bar(edges[:-1], real / max(real.sum(), 1), width=width * 0.45, align="edge", label="real", color="#1f77b4")
    ax.bar(edges[:-1] + width * 0.45, synth / max(synth.sum(), 1), width=width * 0.45, align="edge",
           label="synthetic", color="#ff7f0e")
    ax.set_xlabel("query length (words)")
    ax.set_ylabel("share of queries")
    ax.set_title("length")
    ax.legend()

    ax = axes[0, 1]
    styles = ["question", "keyword", "phrase"]
    x = np.arange(len(styles))
    ax.bar(x - 0.2, [report["real"]["style"][k] for k in styles], 0.4, label="real", color="#1f77b4")
    ax.bar(x + 0.2, [report["synthetic"]["style"][k] for k in styles], 0.4, label="synthetic", color="#ff7f0e")
    ax.set_xticks(x, styles)
    ax.set_ylim(0, 1)
    ax.set_title(f"style mix (vocabulary in corpus: real {report['real']['vocab_overlap']:.0%}, "
                 f"synthetic {report['synthetic']['vocab_overlap']:.0%})", fontsize=9)
    ax.legend()

    ax = axes[1, 0]
    types = sorted(report["by_type"])
    shares = [report["by_type"][t]["share"] for t in types]
    ax.barh(types, shares, color="#ff7f0e", label="share of synthetic set")
    if e:
        near = e.get("real_nearest_synthetic_type", {})
        ax.barh(types, [near.get(t, 0.0) for t in types], height=0.35, color="#1f77b4",
                label="share of real queries nearest to it")
    ax.set_xlim(0, 1)
    ax.set_title("synthetic query types")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    if e:
        bins = np.linspace(min(min(e["real_to_synthetic_nn"]), min(e["synthetic_to_real_nn"]), 0.0), 1.0, 21)
        ax.hist(e["real_to_synthetic_nn"], bins=bins, alpha=0.6, label="real → nearest synthetic", color="#1f77b4")
        ax.hist(e["synthetic_to_real_nn"], bins=bins, alpha=0.6, label="synthetic → nearest real", color="#ff7f0e")
        ax.set_xlabel("cosine similarity")
        ax.set_title(f"embedding space: MMD² {e['mmd2_rbf']:.3f} (p={e['mmd_p_value']:.3f})")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no encoder given:\nembedding statistics skipped", ha="center", va="center")
        ax.set_axis_off()
    n_flags = len(report.get("flags", []))
    fig.suptitle(f"real vs synthetic queries ({report['real']['n']} real, {report['synthetic']['n']} synthetic; "
                 f"{n_flags} flag{'s' if n_flags != 1 else ''})")
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path
