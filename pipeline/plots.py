"""The report's plots (matplotlib, Agg): training curves, accuracy-vs-latency Pareto fronts per target,
per-layer profile bars. Each function writes one PNG and returns its path, or None when there is
nothing to draw."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from pipeline.core.fileio import atomic_write  # noqa: E402
from pipeline.report.markdown import NOT_TERMS  # noqa: E402

PRECISION_COLOURS = {"int8": "#2a9d8f", "float": "#8d99ae", "convert": "#e76f51"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def training_curves(curves: dict[str, list[dict]], path: Path) -> Path | None:
    """Per role (teacher, distill): every loss term per epoch, and validation top-1."""
    roles = [(role, rows) for role, rows in curves.items() if rows]
    if not roles:
        return None
    fig, axes = plt.subplots(len(roles), 2, figsize=(10, 3.3 * len(roles)), squeeze=False)
    for (role, rows), (loss_ax, acc_ax) in zip(roles, axes):
        epochs = [r["epoch"] for r in rows]
        for term in (k for k in rows[0] if k not in NOT_TERMS):
            loss_ax.plot(epochs, [r[term] for r in rows], marker="o", label=term)
        loss_ax.set(title=f"{role}: training loss per term", xlabel="epoch", ylabel="loss (epoch mean, log)")
        loss_ax.set_yscale("log")
        loss_ax.legend(fontsize=8)
        loss_ax.grid(alpha=0.3)
        acc_ax.plot(epochs, [r["val_top1"] for r in rows], marker="o", color="#264653")
        acc_ax.set(title=f"{role}: validation top-1", xlabel="epoch", ylabel="top-1 %")
        acc_ax.grid(alpha=0.3)
        for ax in (loss_ax, acc_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    front, best = [], float("-inf")
    for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((latency, accuracy))
            best = accuracy
    return front


LABEL_RADII = (10, 18, 28, 40, 54, 70)  # points from the marker, tried nearest first
LABEL_ANGLES = (0, 180, 30, -30, 150, 210, 90, 270, 60, -60, 120, 240)  # degrees, in this order at each radius


def _crosses(a, b, c, d) -> bool:
    """Whether segment ab crosses segment cd (display coordinates)."""
    def side(p, q, r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
    return side(c, d, a) * side(c, d, b) < 0 and side(a, b, c) * side(a, b, d) < 0


def place_labels(ax, points: list[tuple[float, float, str]], first: str | None = None, fontsize: float = 8.5,
                 marked: tuple[str, ...] = ()) -> None:
    """Name each point, joined to it by a leader line, so that no name overlaps another name or a marker, no
    leader crosses another leader, a marker or a name, and every name stays inside the axes: each name goes at the
    first such spot, nearest first around its point (where none is left: the spot breaking the fewest of these).
    `first` (the shipped artifact) is placed first, then the `marked` points (a larger marker: a star, a ring), then
    the rest by latency. Call once the layout is final."""
    import math

    import numpy as np
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    centres = {name: ax.transData.transform((x, y)) for x, y, name in points}
    markers = {name: Bbox.from_bounds(c[0] - r, c[1] - r, 2 * r, 2 * r)
               for name, c in centres.items() for r in [12 if name in marked else 6]}
    boxes: list = []  # the names placed so far
    leaders: list = []  # their leader lines, (start, end)
    spots = [(r, a) for r in LABEL_RADII for a in LABEL_ANGLES]

    def faults(name: str, box, start, end) -> int:
        line = [start + (end - start) * t for t in np.linspace(0.15, 1, 8)]
        others = [m for other, m in markers.items() if other != name]
        return ((not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1))
                + sum(box.overlaps(b) for b in boxes + list(markers.values()))
                + sum(m.contains(*q) for m in others + boxes for q in line)
                + sum(_crosses(start, end, a, b) for a, b in leaders)
                + sum(box.contains(*(a + (b - a) * t)) for a, b in leaders for t in np.linspace(0, 1, 8)))

    for x, y, name in sorted(points, key=lambda p: (p[2] != first, p[2] not in marked, p[0], -p[1])):
        best = None
        for radius, angle in spots:
            dx, dy = radius * math.cos(math.radians(angle)), radius * math.sin(math.radians(angle))
            ha, rx = ("left", 0.0) if dx > 1 else ("right", 1.0) if dx < -1 else ("center", 0.5)
            va, ry = ("bottom", 0.0) if dy > 1 else ("top", 1.0) if dy < -1 else ("center", 0.5)
            label = ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize,
                                fontweight="bold" if name == first else "normal", ha=ha, va=va,
                                arrowprops={"arrowstyle": "-", "color": "#8d99ae", "lw": 0.7, "shrinkA": 1,
                                            "shrinkB": 8 if name in marked else 4, "relpos": (rx, ry)})
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer).padded(2)  # the name alone, not its leader line
            start = centres[name]  # the leader runs from the point to the name's corner (or side) facing it
            end = start + np.array([dx, dy]) * renderer.points_to_pixels(1.0)
            score = faults(name, box, start, end)
            if best is None or score < best[0]:
                if best is not None:
                    best[1].remove()
                best = (score, label, box, (start, end))
            else:
                label.remove()
            if score == 0:
                break
        boxes.append(best[2])
        leaders.append(best[3])


def pareto(target: str, rows: list[dict], top1: dict[str, float], budget_ms: float, min_top1: float | None,
           path: Path, chosen: str | None = None, picks: tuple[str, ...] = ()) -> Path | None:
    """Test top-1 vs p90 latency of every timed artifact on one target, the front, the budgets, the artifact that
    ships there (a star) and each SDK's pick (a ring); every point named, no two names overlapping."""
    points = [(r["latency_ms"]["p90"], top1[r["artifact"]], r["artifact"]) for r in rows
              if "latency_ms" in r and r["artifact"] in top1]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="#264653", zorder=3)
    rings = [(x, y) for x, y, name in points if name in picks and name != chosen]
    if rings:
        ax.scatter([p[0] for p in rings], [p[1] for p in rings], s=150, facecolors="none", edgecolors="#2a9d8f",
                   linewidths=1.6, zorder=4, label="ships for its SDK")
    for x, y, name in points:
        if name == chosen:
            ax.scatter([x], [y], s=300, marker="*", color="#e9c46a", edgecolor="#264653", zorder=5,
                       label=f"ships (overall pick): {name}")
    front = pareto_front([(x, y) for x, y, _ in points])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#2a9d8f", label="Pareto front")
    if budget_ms <= 3 * max(p[0] for p in points):
        ax.axvline(budget_ms, color="#e76f51", linestyle="--", label=f"latency budget {budget_ms:g} ms")
    else:
        ax.plot([], [], " ", label=f"latency budget {budget_ms:g} ms: off the chart, all within")
    if min_top1 is not None:
        ax.axhline(min_top1, color="#f4a261", linestyle=":", label=f"accuracy floor {min_top1:.2f}%")
    label = rows[0].get("label", "")
    ax.set(title=f"{target}: accuracy vs latency ({label})", xlabel="p90 latency, batch 1 (ms)",
           ylabel="test top-1 %")
    shown = [p[0] for p in points] + ([budget_ms] if budget_ms <= 3 * max(p[0] for p in points) else [])
    if max(shown) > 8 * min(shown):  # a wide spread: log scale, so the fast files do not crowd into one corner
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.12, y=0.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    place_labels(ax, points, chosen, marked=(*picks, *([chosen] if chosen else [])))
    return _save(fig, path)


def layer_bars(target: str, row: dict, path: Path, top: int = 8) -> Path | None:
    """One artifact on one target: time per op type (ms per run, its share of the layers' time at the bar's end),
    coloured by int8 / float / conversion. One small figure per artifact, so that a page lays them out side by side
    on a wide screen and one under the other on a phone, each at a readable size."""
    import textwrap

    if "profile" not in row:
        return None
    ops = row["profile"]["by_op_type"][:top][::-1]
    fig, ax = plt.subplots(figsize=(5.0, 1.4 + 0.32 * len(ops)))
    names = ["\n".join(textwrap.wrap(e["op_type"], 24, break_long_words=False)) for e in ops]
    bars = ax.barh(range(len(ops)), [e["ms"] for e in ops],  # by position: an op type may come twice (int8, float)
                   color=[PRECISION_COLOURS.get(e["precision"], "#8d99ae") for e in ops])
    ax.set_yticks(range(len(ops)), names)
    for bar, e in zip(bars, ops):
        ax.annotate(f"{100 * e['share']:.0f}%", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=9.5, color="#1d2433")
    ax.set_xlim(0, 1.2 * max(e["ms"] for e in ops))
    ax.set_title(f"{target} / {row['artifact']}", fontsize=12)
    ax.set_xlabel("ms per run (profiled)\n%: share of the layers' time", fontsize=10)
    ax.tick_params(axis="y", labelsize=10)
    ax.tick_params(axis="x", labelsize=9)
    ax.grid(axis="x", alpha=0.3)
    present = [p for p in PRECISION_COLOURS if any(e["precision"] == p for e in ops)]
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=PRECISION_COLOURS[p]) for p in present], present,
              loc="lower right", fontsize=9, framealpha=0.9)
    return _save(fig, path)
