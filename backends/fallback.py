"""The accuracy-aware fallback every static INT8 backend shares (ONNX Runtime, ExecuTorch, LiteRT): quantize
everything; while the INT8 file is over budget, keep the next most sensitive layer in float.

Over budget means the top-1 drop against fp32 on the validation images is above max_drop *and* real: the upper
end of its paired 95% interval (pipeline.core.intervals.difference_interval) is below zero. So the loop does not
chase an image or two that a small split cannot tell from noise; with fewer than 100 / max_drop images one image
is more than the whole budget, and the loop says so once (quantize.validation_images, data.val_fraction).

Bounded by layers (quantize.max_fallback_layers, and the model's own count) and by seconds
(quantize.max_fallback_seconds: no new step, and no ranking, starts once that much time has gone; the record's
`stopped` says which bound ended the loop, and a file left over budget is flagged by the quantize stage).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.core.intervals import difference_interval, over_budget

log = logging.getLogger(__name__)


def images_for(max_drop: float) -> int:
    """The fewest images on which one image is less than max_drop points."""
    return math.floor(100 / max_drop) + 1 if max_drop > 0 else 0


@dataclass
class Fallback:
    """What the accuracy-aware loop did: the drop (with its interval) after each step, the layers kept in float
    (`excluded`: the names the quantizer takes; `excluded_names`: readable), out of `layers` it could keep."""

    max_drop: float
    fp32_top1: float
    images: int
    layers: int
    shown: Callable[[str], str] = str
    steps: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    stopped: str = ""  # "within budget", "max_fallback_layers", "no layer left" or "max_fallback_seconds"
    seconds: float = 0.0

    @property
    def excluded(self) -> list[str]:
        return self.steps[-1]["excluded"] if self.steps else []

    @property
    def met(self) -> bool:
        return bool(self.steps) and not self.steps[-1]["over"]

    def as_dict(self) -> dict:
        return {"max_drop": self.max_drop, "fp32_top1": self.fp32_top1, "images": self.images, "met": self.met,
                "layers": self.layers, "excluded": self.excluded,
                "excluded_names": [self.shown(name) for name in self.excluded], "steps": self.steps,
                "sensitivity": self.sensitivity, "stopped": self.stopped, "seconds": round(self.seconds, 2)}


def with_fallback(what: str, fp32: np.ndarray, labels: np.ndarray, max_drop: float, max_layers: int, layers: int,
                  predictions: Callable[[list[str]], np.ndarray], rank: Callable[[], list[dict]],
                  shown: Callable[[str], str] = str, *, final: Callable[[list[str]], np.ndarray] | None = None,
                  max_seconds: float | None = None) -> Fallback:
    """`fp32`: the float model's predicted classes on the validation images (`labels`); `predictions(excluded)`
    writes the INT8 model with those layers in float and returns its predicted classes; `rank()` scores the
    layers once ({"node", "relative_mse"}, most harmful first), only when the first step is over budget.
    Stops within budget, at `max_layers` layers kept in float, when none of the model's `layers` is left, or
    once `max_seconds` have gone. `shown` names a layer for people (the log, the report).

    Where writing the file is the cost (ExecuTorch lowers a whole program), `predictions` may judge a stand-in
    for it (the fake-quantized torch graph) and `final(excluded)` write the file once, at the end, and return its
    predicted classes: judged as one more step (steps say what they judged: "stand-in" or "file"), and where the
    file is over budget though the stand-in was not, the loop goes on from there with `final` as its predictions."""
    images = len(labels)
    fp32_top1 = float(100 * (fp32 == labels).mean())
    result = Fallback(max_drop, round(fp32_top1, 3), images, layers, shown)
    if images < images_for(max_drop):
        log.warning(f"{what}: one of {images} validation images is {100 / images:.2f} top-1 points, more than "
                    f"quantize.max_drop = {max_drop:g}: a drop is judged by its 95% interval; for a budget this "
                    f"fine give at least {images_for(max_drop)} (quantize.validation_images, and data.val_fraction "
                    f"for a larger validation split)")
    start = time.perf_counter()
    excluded: list[str] = []
    ranked: list[dict] | None = None
    judge = predictions

    def step(predict: Callable[[list[str]], np.ndarray]) -> dict:
        record = _step(predict(excluded), excluded, labels, fp32, fp32_top1, max_drop)
        if final is not None:
            record["judged"] = "stand-in" if predict is predictions else "file"
        return record

    while True:
        result.steps.append(step(judge))
        if final is not None and judge is predictions and not result.steps[-1]["over"]:
            result.steps.append(step(final))  # within budget on the stand-in: the file
            judge = final
        last = result.steps[-1]
        result.seconds = time.perf_counter() - start
        stop = ("within budget" if not last["over"] else "max_fallback_layers" if len(excluded) >= max_layers
                else "max_fallback_seconds" if max_seconds is not None and result.seconds >= max_seconds else "")
        if not stop and ranked is None:
            log.info(f"{what} loses {last['drop']:.2f} top-1 points (95% interval of the change "
                     f"{last['delta_interval'][0]:+.2f} to {last['delta_interval'][1]:+.2f}; max_drop {max_drop:g}): "
                     "ranking layers")
            ranked = result.sensitivity = rank()
        remaining = [] if stop else [r["node"] for r in ranked if r["node"] not in excluded]
        if not stop and not remaining:
            stop = "no layer left"
        if stop:
            if final is not None and judge is predictions:  # stopped over budget on the stand-in: write the file
                result.steps.append(step(final))
            result.stopped, result.seconds = stop, time.perf_counter() - start
            if stop == "max_fallback_seconds":
                log.warning(f"{what}: the layer fallback stopped after {result.seconds:.0f} s "
                            f"(quantize.max_fallback_seconds = {max_seconds:g}) with {len(excluded)} layer(s) in "
                            f"float and the drop over max_drop")
            return result
        excluded.append(remaining[0])
        log.info(f"keeping {shown(remaining[0])} in float")


def _step(predicted: np.ndarray, excluded: list[str], labels: np.ndarray, fp32: np.ndarray, fp32_top1: float,
          max_drop: float) -> dict:
    """One step's record: the layers in float, the drop and its interval, and whether it is over budget."""
    top1 = float(100 * (predicted == labels).mean())
    drop = fp32_top1 - top1
    interval = difference_interval(top1, fp32_top1, float((predicted == fp32).mean()), len(labels))
    return {"excluded": list(excluded), "drop": round(drop, 3), "delta_interval": list(interval),
            "over": over_budget(drop, interval, max_drop)}
