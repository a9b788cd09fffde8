"""Figures of a demo or experiment run (matplotlib, PNG), from its results dictionary.

fig1_loglik.png        per party: local-only vs combined test log-likelihood (box plots of
                       the Monte Carlo samples, as in the paper's Fig. 1), oracle as a line
fig2_join_curve.png    test log-likelihood as peers' twins are added one at a time (Fig. 2)
fig3_coefficients.png  the smallest party's coefficients with 95% intervals: local only,
                       combined, and the pooled real data (oracle)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_report(results: dict[str, Any], out: Path) -> list[str]:
    """Write the figures next to results.json; return their file names."""
    import matplotlib

    matplotlib.use("Agg")
    written = [_loglik_figure(results, out)]
    if all(p.get("join_curve") for p in results["parties"]):
        written.append(_join_curve_figure(results, out))
    written.append(_coefficient_figure(results, out))
    return written


def _loglik_figure(results: dict[str, Any], out: Path) -> str:
    """Fig. 1: per party, box plots of local-only and combined test log-likelihood."""
    import matplotlib.pyplot as plt

    parties = results["parties"]
    fig, ax = plt.subplots(figsize=(1.6 * len(parties) + 2, 4.2))
    data, positions, labels = [], [], []
    for i, p in enumerate(parties):
        data += [p["ll_local_samples"], p["ll_combined_samples"]]
        positions += [3 * i, 3 * i + 1]
        labels.append(f"{p['name']}{'*' if p['malicious'] else ''}\n{p['rows']} rows")
    boxes = ax.boxplot(data, positions=positions, widths=0.8, patch_artist=True,
                       showfliers=False)
    for j, box in enumerate(boxes["boxes"]):
        box.set_facecolor("#bbbbbb" if j % 2 == 0 else "#4c9be8")
    ax.axhline(results["oracle"]["ll"], color="#d62728", ls="--", lw=1,
               label="pooled real data (oracle)")
    ax.set_xticks([3 * i + 0.5 for i in range(len(parties))], labels)
    ax.set_ylabel("test log-likelihood per record")
    ax.set_title(f"local only (grey) vs combined with peers' DP twins (blue), "
                 f"epsilon = {results['settings']['epsilon']:g}")
    ax.legend(loc="lower right")
    return _save(fig, out, "fig1_loglik.png")


def _join_curve_figure(results: dict[str, Any], out: Path) -> str:
    """Fig. 2: each party's test log-likelihood as peers' twins are added one at a time."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for p in results["parties"]:
        curve = p["join_curve"]
        ax.plot(range(len(curve)), curve, marker="o", label=f"{p['name']} ({p['rows']} rows)")
    ax.axhline(results["oracle"]["ll"], color="#d62728", ls="--", lw=1, label="oracle")
    ax.set_xlabel("number of peers whose twins are added (plain concatenation)")
    ax.set_ylabel("test log-likelihood per record")
    ax.legend(fontsize=8)
    return _save(fig, out, "fig2_join_curve.png")


def _coefficient_figure(results: dict[str, Any], out: Path) -> str:
    """Fig. 3: the smallest party's coefficients, local only, combined and oracle."""
    import matplotlib.pyplot as plt

    smallest = min(results["parties"], key=lambda p: p["rows"])
    coef, oracle = smallest["coefficients"], results["oracle"]["coefficients"]
    terms = [t for t in coef if t != "Intercept"]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(terms) + 1.5))
    y = np.arange(len(terms))
    for offset, (label, table, prefix, color) in enumerate([
            ("local only", coef, "local_", "#7f7f7f"), ("combined", coef, "", "#1f77b4"),
            ("oracle", oracle, "", "#d62728")]):
        est, lo, hi = (np.array([_num(table[t][prefix + key]) for t in terms])
                       for key in ("estimate", "lower", "upper"))
        ax.errorbar(est, y + (offset - 1) * 0.25, xerr=[est - lo, hi - est], fmt="o",
                    color=color, label=label, capsize=2, ms=4)
    ax.axvline(0, color="black", lw=0.5)
    ax.set_yticks(y, terms)
    ax.set_xlabel("coefficient (log rate ratio per unit), 95% interval")
    ax.set_title(f"{smallest['name']} ({smallest['rows']} rows)")
    ax.legend(fontsize=8)
    return _save(fig, out, "fig3_coefficients.png")


def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _save(fig: Any, out: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name
