"""The attack report (a privacy audit's result) as one self-contained HTML file with inline SVG
plots (no scripts, no external resources), so that it can be archived and opened anywhere."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np

WIDTH, HEIGHT, PAD = 560, 400, 60
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#7f7f7f")

# The report's one style sheet; pages that show the report allow exactly it (a CSP hash).
STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
    "td,th{padding:4px 10px;text-align:left;border-bottom:1px solid #ddd}"
    ".warn{background:#fdd;border:2px solid #c00;padding:1em;font-weight:bold}"
    "figure{display:inline-block;margin:1em}"
)


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray
    colour: str
    dashed: bool = False


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0**e for e in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]
    return list(np.linspace(lo, hi, 6))


def line_plot(
    series: list[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log: bool = False,
    lo: float = 0.0,
    hi: float = 1.0,
) -> str:
    """An SVG line chart of ``series`` on [lo, hi]² (log-log when ``log``)."""

    def scale(v: np.ndarray) -> np.ndarray:
        v = np.clip(np.asarray(v, dtype=float), lo, hi)
        if log:
            return (np.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
        return (v - lo) / (hi - lo)

    def px(v: np.ndarray) -> np.ndarray:
        return PAD + scale(v) * (WIDTH - 2 * PAD)

    def py(v: np.ndarray) -> np.ndarray:
        return HEIGHT - PAD - scale(v) * (HEIGHT - 2 * PAD)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-weight="bold">'
        f"{html.escape(title)}</text>",
        f'<rect x="{PAD}" y="{PAD}" width="{WIDTH - 2 * PAD}" height="{HEIGHT - 2 * PAD}" '
        'fill="none" stroke="#333"/>',
    ]
    for t in _ticks(lo, hi, log):
        x, y = float(px(np.array([t]))[0]), float(py(np.array([t]))[0])
        label = f"{t:g}"
        parts.append(
            f'<line x1="{x:.1f}" y1="{HEIGHT - PAD}" x2="{x:.1f}" y2="{PAD}" stroke="#eee"/>'
        )
        parts.append(
            f'<line x1="{PAD}" y1="{y:.1f}" x2="{WIDTH - PAD}" y2="{y:.1f}" stroke="#eee"/>'
        )
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - PAD + 16}" text-anchor="middle" font-size="11">{label}</text>'
        )
        parts.append(
            f'<text x="{PAD - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{label}</text>'
        )
    parts.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 15}" text-anchor="middle">{html.escape(xlabel)}</text>'
    )
    parts.append(
        f'<text x="15" y="{HEIGHT / 2}" text-anchor="middle" '
        f'transform="rotate(-90 15 {HEIGHT / 2})">{html.escape(ylabel)}</text>'
    )
    for i, s in enumerate(series):
        points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px(s.x), py(s.y), strict=True))
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{s.colour}" stroke-width="2"{dash}/>'
        )
        ly = PAD + 16 + 16 * i
        parts.append(
            f'<line x1="{WIDTH - PAD - 150}" y1="{ly}" x2="{WIDTH - PAD - 130}" y2="{ly}" '
            f'stroke="{s.colour}" stroke-width="2"{dash}/>'
        )
        parts.append(
            f'<text x="{WIDTH - PAD - 125}" y="{ly + 4}" font-size="11">{html.escape(s.label)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def histogram(groups: dict[str, np.ndarray], *, title: str, xlabel: str, bins: int = 20) -> str:
    """Overlaid step histograms of each group, as an SVG line chart of densities."""
    values = np.concatenate([g for g in groups.values() if len(g)])
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    series = []
    peak = 0.0
    for i, (label, g) in enumerate(groups.items()):
        counts, _ = np.histogram(g, bins=edges)
        share = counts / max(1, len(g))
        peak = max(peak, float(share.max(initial=0)))
        xs = np.repeat(edges, 2)[1:-1]
        ys = np.repeat(share, 2)
        series.append((label, xs, ys, COLOURS[i % len(COLOURS)]))
    peak = peak or 1.0
    return line_plot(
        [
            Series(f"{label} (n={len(groups[label])})", (xs - lo) / (hi - lo), ys / peak, colour)
            for label, xs, ys, colour in series
        ],
        title=title,
        xlabel=f"{xlabel} (scaled from {lo:.3g} to {hi:.3g})",
        ylabel="share of canaries (scaled to the tallest bin)",
    )


def render(audit: dict, plots: list[str]) -> str:
    """The report page: headline figures, plots, and the method in a few lines."""
    claimed = audit["claimed_epsilon"]
    mia, canary = audit["mia"], audit["canary"]
    rows = [
        (
            "claimed ε (model card)",
            "none (trained without DP)" if claimed is None else f"{claimed:.4g}",
        ),
        ("claimed δ", "-" if audit["claimed_delta"] is None else f"{audit['claimed_delta']:.3g}"),
        (
            "membership inference",
            f"{mia['attack']}: AUC {mia['auc']:.3f}, TPR {mia['tpr_at_fpr']['0.001']:.3f} at 0.1% FPR, "
            f"{mia['tpr_at_fpr']['0.01']:.3f} at 1% FPR ({mia['members']} members, "
            f"{mia['non_members']} non-members)",
        ),
        (
            "one-run canary audit",
            f"ε ≥ {canary['epsilon_lower_bound']:.3f} at {canary['confidence']:.0%} confidence "
            f"({canary['correct']} of {canary['guesses']} guesses correct, {canary['m']} canaries)",
        ),
    ]
    warning = audit.get("warning")
    body = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        "<title>securetrain privacy audit</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Privacy audit</h1>",
        f"<p>Bundle: <code>{html.escape(audit['bundle'])}</code></p>",
    ]
    if warning:
        body.append(f'<p class="warn">{html.escape(warning)}</p>')
    body.append("<table>")
    body += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows]
    body.append("</table>")
    body += [f"<figure>{p}</figure>" for p in plots]
    body.append(
        "<h2>Method</h2><p>The headline attack is the one with the highest AUC. "
        "Members are the bundle's training rows and non-members its held-out "
        "rows, from the split recorded on the card. The LOSS attack scores each row by minus its "
        "loss; offline LiRA compares the model's confidence on a row with that of reference "
        "models trained the same way on held-out population rows that are not scored. The "
        "dashed line is the most any attack can reach against the claimed (ε, δ): "
        "TPR ≤ e<sup>ε</sup>·FPR + δ. The one-run audit (Steinke, Nasr and Jagielski, 2023) "
        "trains once more with the bundle's settings and canaries inserted at random, and turns "
        "the correct membership guesses into a lower bound on ε; it can never legitimately "
        "exceed the claimed ε.</p></body></html>"
    )
    return "\n".join(body)
