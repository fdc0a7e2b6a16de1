"""Quick, noise-aware speed comparison of a few compiled models on this host: interleaved rounds (each
round runs every model a few times, the order rotating), CPU time per call beside wall time, and the
median per model and of the per-round ratios with a distribution-free 95% interval (the agent's order-
statistics interval, targets.agent.stats.median_interval)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from targets.agent import stats


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """Median and its 95% interval; at least 8 values (min_rounds), so the interval always exists."""
    low, high = stats.median_interval(values)
    return statistics.median(values), low, high


def interleaved(fns: dict[str, Callable[[], object]], seconds: float, block: int = 3, warmup: int = 2,
                min_rounds: int = 8, max_rounds: int = 400, rel: float = 0.03) -> dict[str, dict[str, list[float]]]:
    """name -> {"cpu": [...], "wall": [...]} ms per call, one value per round (the mean of `block` calls).

    Stops after `seconds`, or earlier once every median's 95% interval is within `rel` of it (after
    `min_rounds` rounds)."""
    names = list(fns)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {n: {"cpu": [], "wall": []} for n in names}
    deadline = time.perf_counter() + seconds
    for r in range(max_rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(block):
                fns[name]()
            samples[name]["cpu"].append((time.process_time() - c0) * 1000 / block)
            samples[name]["wall"].append((time.perf_counter() - w0) * 1000 / block)
        if r + 1 >= min_rounds:
            if time.perf_counter() > deadline:
                break
            tight = True
            for name in names:
                mid, low, high = median_interval(samples[name]["cpu"])
                tight &= (high - low) / 2 <= rel * mid
            if tight:
                break
    return samples


def summary(values: list[float]) -> dict:
    mid, low, high = median_interval(values)
    return {"p50": round(mid, 4), "interval": [round(low, 4), round(high, 4)], "rounds": len(values)}


def speedup(baseline: list[float], other: list[float]) -> dict:
    """baseline / other per round (paired: the same round saw the same load), median and interval;
    verdict "faster" / "slower" only when the interval excludes 1."""
    mid, low, high = median_interval([b / o for b, o in zip(baseline, other)])
    verdict = "faster" if low > 1 else "slower" if high < 1 else "equal within noise"
    return {"x": round(mid, 3), "interval": [round(low, 3), round(high, 3)], "verdict": verdict}
