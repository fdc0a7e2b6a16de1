"""The report's plots (matplotlib, Agg): training curves, accuracy-vs-latency Pareto fronts per target,
per-layer profile bars. Each function writes one PNG and returns its path, or None when there is
nothing to draw."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipeline.core.fileio import atomic_write  # noqa: E402

NOT_TERMS = ("epoch", "lr", "images_per_s", "seconds", "val_top1", "processes", "gpu_memory_gb")  # not losses
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


def pareto(target: str, rows: list[dict], top1: dict[str, float], budget_ms: float, min_top1: float | None,
           path: Path, chosen: str | None = None) -> Path | None:
    """Test top-1 vs p90 latency of every timed artifact on one target, the front, the budgets and the
    artifact that ships there."""
    points = [(r["latency_ms"]["p90"], top1[r["artifact"]], r["artifact"]) for r in rows
              if "latency_ms" in r and r["artifact"] in top1]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([p[0] for p in points], [p[1] for p in points], color="#264653", zorder=3)
    for x, y, name in points:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    for x, y, name in points:
        if name == chosen:
            ax.scatter([x], [y], s=260, marker="*", color="#e9c46a", edgecolor="#264653", zorder=4,
                       label=f"ships: {name}")
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
    ax.margins(x=0.2, y=0.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def layer_bars(target: str, rows: list[dict], path: Path, top: int = 8) -> Path | None:
    """Per artifact on one target: time per op type (ms per run), coloured by int8 / float / conversion."""
    profiled = [r for r in rows if "profile" in r]
    if not profiled:
        return None
    fig, axes = plt.subplots(1, len(profiled), figsize=(3.6 * len(profiled), 3.6), squeeze=False)
    for r, ax in zip(profiled, axes[0]):
        ops = r["profile"]["by_op_type"][:top][::-1]
        ax.barh([e["op_type"] for e in ops], [e["ms"] for e in ops],
                color=[PRECISION_COLOURS.get(e["precision"], "#8d99ae") for e in ops])
        ax.set(title=f"{r['artifact']}", xlabel="ms per run (profiled)")
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in PRECISION_COLOURS.values()]
    axes[0][-1].legend(handles, list(PRECISION_COLOURS), loc="lower right", fontsize=8)
    fig.suptitle(f"{target}: where the time goes (top {top} op types)")
    return _save(fig, path)
