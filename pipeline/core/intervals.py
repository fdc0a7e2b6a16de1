"""95% intervals the stages and the ship rule share: of a proportion (Wilson) and of the top-1 change between
two models scored on the same images (paired)."""
from __future__ import annotations

import math

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def wilson(hits: int, n: int, z: float = Z95) -> list[float]:
    """The 95% Wilson score interval of a proportion hits / n, in percent."""
    p, z2 = hits / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [round(100 * max(centre - half, 0.0), 3), round(100 * min(centre + half, 1.0), 3)]


def difference_interval(top1: float, reference: float, agreement: float, images: int) -> tuple[float, float]:
    """A 95% interval for (top1 - reference) in points, from paired predictions on the same images.

    The images on which the two models disagree bound the discordant pairs of McNemar's test
    (b + c <= disagreements): using that bound makes the normal-approximation interval conservative.
    """
    n = max(images, 1)
    d = (top1 - reference) / 100
    discordant = max(1.0 - agreement, abs(d))
    spread = Z95 * math.sqrt(max(discordant / n - d * d / n, 0.0))
    return round(100 * (d - spread), 2), round(100 * (d + spread), 2)


def over_budget(drop: float, interval: tuple[float, float], max_drop: float) -> bool:
    """A top-1 drop (points) over max_drop that the 95% interval of the change (`interval`, of top1 - reference)
    calls real: its upper end below zero. One image or two that a small split cannot tell from noise are not."""
    return drop > max_drop and interval[1] < 0
