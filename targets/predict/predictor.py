"""Latency on a named device, predicted from public measurements of other models on that device.

One data set per (device, runtime, precision): the public models' graph features (features.csv, built
here) joined with their on-device inference times (measurements.csv, Qualcomm AI Hub). Several model
kinds are fitted on it (NPU jobs only: the table has no phone CPU timings); bench/latency_predictor.py measures
each by leave-one-family-out error (all variants of one architecture held out together) and writes the winner
to predictor.json with, per data set, each family's leave-one-model-out error and the error of fitting the
device from its sibling. A prediction refits the chosen kind on the shipped tables (milliseconds, no network),
states the held-out error of its basis (the model's own family when the table has it, else a new family's),
and an interval: the 10th-90th percentile of the held-out log errors on that data set, stretched by one factor
calibrated so that bands made without a family hold LEVEL of that family's models, extended to hold the own
family's held-out errors, and widened by rule (stated in the prediction) for a model outside the public
models' FLOPs range or with op types the features do not cover.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from targets.predict.features import NUMERIC

HERE = Path(__file__).parent
FEATURES_FILE, MEASUREMENTS_FILE = HERE / "features.csv", HERE / "measurements.csv"
NUMERICS_FILE, PREDICTOR_FILE = HERE / "numerics.csv", HERE / "predictor.json"
RUNTIMES = ("tflite", "qnn_dlc", "onnx")  # AI Hub's runtimes that take a model we export
MIN_MODELS, MIN_FAMILIES = 10, 4
LEVEL = 0.8  # the interval's nominal coverage
COSTS = ["linear_gflops", "attention_gflops", "conv_gflops", "dwconv_gflops", "softmax_melems", "norm_melems",
         "elementwise_melems", "pool_melems", "movement_mb", "param_mb"]
NEAR = ["total_gflops", "param_mb", "activation_mb", "nodes"]  # what "similar" means for the nearest models
UNCOVERED_WIDENING = 1.5  # log-interval half-widths times this when the graph has ops the features miss
# a device -> the adjacent generation of its line in the table: the sibling-device error fits one from the other
SIBLINGS = {"Samsung Galaxy S22 5G": "Samsung Galaxy S24", "Samsung Galaxy S24": "Samsung Galaxy S25",
            "Samsung Galaxy S25": "Samsung Galaxy S24", "Samsung Galaxy S26": "Samsung Galaxy S25",
            "Snapdragon X Elite CRD": "Snapdragon X2 Elite CRD", "Snapdragon X2 Elite CRD": "Snapdragon X Elite CRD"}


@dataclass
class Dataset:
    """One (device, runtime, precision): public models with features, their family and their latency."""
    key: tuple[str, str, str]
    models: list[str]
    families: list[str]
    x: np.ndarray  # rows of NUMERIC features
    ms: np.ndarray
    jobs: list[str] = field(default_factory=list)


def _log_features(x: np.ndarray) -> np.ndarray:
    return np.log1p(x)


def _fit_flops(x, y):
    """log ms = a + b log GFLOPs."""
    a = np.c_[np.ones(len(x)), np.log(x[:, NUMERIC.index("total_gflops")] + 1e-4)]
    coef, *_ = np.linalg.lstsq(a, np.log(y), rcond=None)
    return lambda q: np.exp(np.c_[np.ones(len(q)), np.log(q[:, NUMERIC.index("total_gflops")] + 1e-4)] @ coef)


def _fit_roofline(x, y):
    """ms = c0 + sum of non-negative costs per op class (FLOPs, elements, bytes), fitted in relative error."""
    from scipy.optimize import nnls

    cols = [NUMERIC.index(c) for c in COSTS]
    scale = np.maximum(x[:, cols].max(axis=0), 1e-9)
    a = np.c_[np.ones(len(x)), x[:, cols] / scale]
    coef, _ = nnls(a / y[:, None], np.ones(len(y)))
    return lambda q: np.maximum(np.c_[np.ones(len(q)), q[:, cols] / scale] @ coef, 1e-3)


def _fit_ridge(x, y):
    """Ridge regression of log ms on log(1 + feature), standardised."""
    from sklearn.linear_model import Ridge

    z = _log_features(x)
    mean, std = z.mean(axis=0), z.std(axis=0) + 1e-9
    model = Ridge(alpha=1.0).fit((z - mean) / std, np.log(y))
    return lambda q: np.exp(model.predict((_log_features(q) - mean) / std))


def _fit_knn(x, y, k: int = 3):
    """Geometric mean of the k nearest models (standardised log features)."""
    z = _log_features(x)
    mean, std = z.mean(axis=0), z.std(axis=0) + 1e-9
    train = (z - mean) / std

    def predict(q):
        d = ((((_log_features(q) - mean) / std)[:, None, :] - train[None]) ** 2).sum(-1)
        nearest = np.argsort(d, axis=1)[:, :k]
        return np.exp(np.log(y)[nearest].mean(axis=1))
    return predict


def _fit_boosting(x, y):
    """Gradient-boosted trees on log(1 + feature) -> log ms (sklearn, depth 2)."""
    from sklearn.ensemble import GradientBoostingRegressor

    model = GradientBoostingRegressor(n_estimators=150, max_depth=2, learning_rate=0.05, random_state=0)
    model.fit(_log_features(x), np.log(y))
    return lambda q: np.exp(model.predict(_log_features(q)))


def _fit_blend(x, y):
    """Geometric mean of ridge and roofline."""
    ridge, roofline = _fit_ridge(x, y), _fit_roofline(x, y)
    return lambda q: np.sqrt(ridge(q) * roofline(q))


KINDS = {"flops": _fit_flops, "roofline": _fit_roofline, "ridge": _fit_ridge, "knn": _fit_knn,
         "boosting": _fit_boosting, "blend": _fit_blend}


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@cache
def zoo_features() -> dict[str, dict]:
    """features.csv: model id -> row (numbers as floats), models with uncovered ops left out."""
    out = {}
    for row in _read(FEATURES_FILE):
        if not row["uncovered"]:
            out[row["model"]] = {**row, **{k: float(row[k]) for k in NUMERIC}}
    return out


@cache
def datasets() -> dict[tuple[str, str, str], Dataset]:
    """Every (device, runtime, precision) with at least MIN_MODELS public models of MIN_FAMILIES families, from
    the jobs that ran mainly on the NPU (a job AI Hub lists as GPU or CPU is a model the NPU did not take)."""
    zoo = zoo_features()
    grouped: dict[tuple, list[dict]] = {}
    for row in _read(MEASUREMENTS_FILE):
        if row["model"] in zoo and row["runtime"] in RUNTIMES and row["compute_unit"] == "NPU":
            grouped.setdefault((row["device"], row["runtime"], row["precision"]), []).append(row)
    out = {}
    for key, rows in sorted(grouped.items()):
        families = [zoo[r["model"]]["family"] for r in rows]
        if len(rows) < MIN_MODELS or len(set(families)) < MIN_FAMILIES:
            continue
        out[key] = Dataset(key, [r["model"] for r in rows], families,
                           np.array([[zoo[r["model"]][k] for k in NUMERIC] for r in rows]),
                           np.array([float(r["inference_ms"]) for r in rows]), [r["job_id"] for r in rows])
    return out


def held_out(data: Dataset, kind: str) -> np.ndarray:
    """Each model's prediction by `kind` fitted without its whole family."""
    families = np.array(data.families)
    pred = np.empty(len(data.ms))
    for family in dict.fromkeys(data.families):
        out = families == family
        pred[out] = KINDS[kind](data.x[~out], data.ms[~out])(data.x[out])
    return pred


def band(log_errors: np.ndarray) -> tuple[float, float]:
    """The central LEVEL band of log(measured / predicted)."""
    tail = (1 - LEVEL) / 2
    return float(np.quantile(log_errors, tail)), float(np.quantile(log_errors, 1 - tail))


def widened(lo: float, hi: float, factor: float) -> tuple[float, float]:
    """A log band stretched about its centre."""
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    return centre - factor * half, centre + factor * half


@dataclass
class HeldOut:
    """One kind on one data set, leave-one-family-out: each model's log(measured / predicted), and the band
    each would be given when the band comes from the other families' errors only."""
    data: Dataset
    pred: np.ndarray
    log_err: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    def inside(self, factor: float) -> np.ndarray:
        lo, hi = widened(self.lo, self.hi, factor)
        return (self.log_err >= lo) & (self.log_err <= hi)


def hold_out(data: Dataset, kind: str) -> HeldOut:
    pred = held_out(data, kind)
    log_err = np.log(data.ms / pred)
    families = np.array(data.families)
    lo, hi = np.empty(len(pred)), np.empty(len(pred))
    for family in dict.fromkeys(data.families):
        out = families == family
        lo[out], hi[out] = band(log_err[~out])
    return HeldOut(data, pred, log_err, lo, hi)


def calibrate(runs: list[HeldOut]) -> float:
    """The smallest stretch of the bands (1 to 4, steps of 0.05) at which they hold LEVEL of the held-out
    models of `runs` (an unseen family errs more than the others' errors suggest: they share their bias)."""
    for factor in np.arange(1.0, 4.001, 0.05):
        if np.mean(np.concatenate([r.inside(factor) for r in runs])) >= LEVEL:
            return round(float(factor), 2)
    return 4.0


def evaluate(run: HeldOut, factor: float, coverage_factor: float) -> dict:
    """A data set's held-out error: median and 90th-percentile absolute percentage error; the band a
    prediction states (all held-out errors, stretched by `factor`), and the coverage of the held-out
    models by bands made without them (their family left out of the band, `coverage_factor` set without
    their device)."""
    ape = np.abs(run.pred / run.data.ms - 1)
    return {"models": len(ape), "families": len(set(run.data.families)),
            "median_ape": round(float(np.median(ape)), 4), "p90_ape": round(float(np.quantile(ape, 0.9)), 4),
            "coverage": round(float(np.mean(run.inside(coverage_factor))), 4),
            "coverage_factor": coverage_factor, "band": [round(v, 4) for v in widened(*band(run.log_err), factor)]}


def _errors(pred: np.ndarray, ms: np.ndarray) -> dict:
    ape = np.abs(pred / ms - 1)
    return {"models": len(ape), "median_ape": round(float(np.median(ape)), 4),
            "p90_ape": round(float(np.quantile(ape, 0.9)), 4)}


def by_family(data: Dataset, kind: str) -> dict[str, dict]:
    """Per family, the error for a new member of a family the table has: each model predicted by `kind` fitted
    on all the others (leave-one-model-out: its family's other members stay in the fit), and the range of its
    family's log(measured / predicted)."""
    pred = np.array([KINDS[kind](np.delete(data.x, i, axis=0), np.delete(data.ms, i))(data.x[i:i + 1])[0]
                     for i in range(len(data.ms))])
    log_err, families = np.log(data.ms / pred), np.array(data.families)
    return {family: {**_errors(pred[families == family], data.ms[families == family]),
                     "log_err": [round(float(log_err[families == family].min()), 4),
                                 round(float(log_err[families == family].max()), 4)]}
            for family in sorted(set(data.families))}


def sibling_error(data: Dataset, sibling: Dataset, kind: str) -> dict:
    """The error of predicting `data`'s device from its sibling's: each model predicted by `kind` fitted on the
    sibling's measurements of the other families (the model and its family unseen, as for a new model)."""
    families, theirs = np.array(data.families), np.array(sibling.families)
    pred = np.empty(len(data.ms))
    for family in dict.fromkeys(data.families):
        out = families == family
        pred[out] = KINDS[kind](sibling.x[theirs != family], sibling.ms[theirs != family])(data.x[out])
    return {"device": sibling.key[0], **_errors(pred, data.ms)}


def details(key: tuple[str, str, str], data: dict[tuple[str, str, str], Dataset], kind: str) -> dict:
    """What predictor.json adds to a data set's held-out error: per-family and sibling-device errors."""
    sibling = data.get((SIBLINGS.get(key[0]), *key[1:]))
    return {"by_family": by_family(data[key], kind),
            "sibling": sibling_error(data[key], sibling, kind) if sibling else None}


def evaluate_kind(kind: str, data: dict[tuple[str, str, str], Dataset]) -> tuple[float, dict[str, dict]]:
    """One kind on every data set: the band stretch calibrated on all of them, and per data set its error
    with a coverage measured with the stretch calibrated on the other devices' data sets."""
    runs = {key: hold_out(d, kind) for key, d in data.items()}
    factor = calibrate(list(runs.values()))
    out = {}
    for key, run in runs.items():
        others = calibrate([r for k, r in runs.items() if k[0] != key[0]])
        out[" | ".join(key)] = evaluate(run, factor, others)
    return factor, out


@cache
def chosen() -> dict:
    """predictor.json: the chosen kind and, per data set, its held-out error and interval band."""
    return json.loads(PREDICTOR_FILE.read_text())


def available() -> list[tuple[str, str, str]]:
    return [tuple(k.split(" | ")) for k in chosen()["datasets"]]


PUBLIC_SOURCES = {"tflite": "litert", "qnn_dlc": "onnxruntime", "onnx": "onnxruntime"}  # AI Hub runtime -> ours


def check_public(device: str, public_runtime: str | None, runtime: str) -> None:
    """ValueError naming the field and the fix for a public_device / public_runtime this predictor cannot serve;
    `public_runtime` as the profile resolves it (TargetProfile.predicted_runtime: None when it has no default)."""
    devices = sorted({k[0] for k in available()})
    if device not in devices:
        import difflib

        close = difflib.get_close_matches(device, devices, n=1)
        raise ValueError(f"public_device '{device}' has no public measurements"
                         + (f" (did you mean '{close[0]}'?)" if close else "") + f"; known: {', '.join(devices)}")
    wanted = public_runtime
    if wanted is None or PUBLIC_SOURCES[wanted] != runtime:
        raise ValueError(f"public_device needs runtime = 'litert' (public_runtime 'tflite') or 'onnxruntime' "
                         f"(public_runtime 'onnx' or 'qnn_dlc'), not runtime '{runtime}'"
                         + (f" with public_runtime '{public_runtime}'" if public_runtime else ""))
    if not any(k[0] == device and k[1] == wanted for k in available()):
        have = sorted({k[1] for k in available() if k[0] == device})
        raise ValueError(f"public_runtime: {device} has no public {wanted} measurements; it has {', '.join(have)}")


def held_out_error(stats: dict, family: str | None) -> dict:
    """The error a prediction states: its own family's leave-one-model-out error when the data set has that
    family, else a new family's (leave-one-family-out, all models), with the sibling-device error beside it."""
    own = stats["by_family"].get(family) if family else None
    basis = ({"basis": "own family held out", "models": own["models"], "median_ape": own["median_ape"],
              "p90_ape": own["p90_ape"]} if own else
             {"basis": "new family", "models": stats["models"], "median_ape": stats["median_ape"],
              "p90_ape": stats["p90_ape"]})
    sibling = stats["sibling"] or {}
    return {**basis, "family": family, "sibling_device": sibling.get("device"),
            "sibling_device_median_ape": sibling.get("median_ape"), "sibling_device_p90_ape": sibling.get("p90_ape")}


@cache
def _jobs_by_unit() -> dict[tuple[str, str], dict[str, int]]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for row in _read(MEASUREMENTS_FILE):
        units = counts.setdefault((row["device"], row["runtime"]), {"NPU": 0, "GPU": 0, "CPU": 0})
        units[row["compute_unit"]] = units.get(row["compute_unit"], 0) + 1
    return counts


def public_coverage(device: str, runtime: str) -> dict:
    """What the public table holds for one device and runtime: its jobs by AI Hub's primary compute unit (all
    models and precisions), and what can be predicted from it."""
    jobs = _jobs_by_unit().get((device, runtime), {"NPU": 0, "GPU": 0, "CPU": 0})
    return {"device": device, "runtime": runtime, "jobs_by_compute_unit": jobs, "predicts": "NPU",
            "note": f"{jobs['NPU']} NPU, {jobs['GPU']} GPU, {jobs['CPU']} CPU jobs (a GPU or CPU job is one whose "
                    "layers mostly ran off the NPU); predictions are NPU latency, fitted on NPU jobs only: no phone "
                    "CPU latency can be predicted from this table"}


def table_jobs_by_compute_unit() -> dict[str, int]:
    """The public jobs of the devices with data sets, on the runtimes a prediction serves, by compute unit."""
    devices, total = {k[0] for k in available()}, {"NPU": 0, "GPU": 0, "CPU": 0}
    for (device, runtime), units in _jobs_by_unit().items():
        if device in devices and runtime in RUNTIMES:
            for unit, n in units.items():
                total[unit] = total.get(unit, 0) + n
    return total


def predict(f: dict, device: str, runtime: str, precision: str, family: str | None = None) -> dict:
    """The latency of a model with features `f` (features.features) of architecture `family` (zoo.family_of;
    None: unknown) on one public device's NPU, runtime and precision: point, interval, the held-out error behind
    them, why the interval was widened, and the 3 nearest public models."""
    key = (device, runtime, precision)
    stats = chosen()["datasets"].get(" | ".join(key))
    if stats is None:
        have = sorted({k[2] for k in available() if k[:2] == key[:2]})
        return {"error": f"no public measurements of {precision} models on {device} with {runtime}"
                         + (f" (there are: {', '.join(have)})" if have else "")}
    data = datasets()[key]
    kind = chosen()["kind"]
    q = np.array([[float(f[k]) for k in NUMERIC]])
    point = float(KINDS[kind](data.x, data.ms)(q)[0])
    lo, hi = stats["band"]
    why = []
    own = stats["by_family"].get(family) if family else None
    if own and (own["log_err"][0] < lo or own["log_err"][1] > hi):
        lo, hi = min(lo, own["log_err"][0]), max(hi, own["log_err"][1])
        why.append(f"the {family} family's public models, each held out, measured {math.exp(own['log_err'][0]):.2f}"
                   f"-{math.exp(own['log_err'][1]):.2f}x their prediction, outside the band: interval extended to "
                   "hold them")
    flops, known = f["total_gflops"], data.x[:, NUMERIC.index("total_gflops")]
    outside = max(known.min() / max(flops, 1e-9), flops / known.max(), 1.0)
    if outside > 1:
        widen = 1 + math.log10(outside)
        lo, hi = lo * widen, hi * widen
        nearest_edge = "below the smallest" if flops < known.min() else "above the largest"
        why.append(f"{flops:.3g} GFLOPs is {outside:.1f}x {nearest_edge} public model's "
                   f"({known.min() if flops < known.min() else known.max():.3g}): extrapolated, interval widened "
                   f"{widen:.2f}x (by rule, not measured)")
    if f.get("uncovered"):
        lo, hi = lo * UNCOVERED_WIDENING, hi * UNCOVERED_WIDENING
        ops = ", ".join(f"{op} x{n}" for op, n in f["uncovered"].items())
        why.append(f"ops the features do not cover ({ops}): their cost is not in the prediction, interval "
                   f"widened {UNCOVERED_WIDENING}x (by rule)")
    error = held_out_error(stats, family)
    return {"device": device, "runtime": runtime, "precision": precision, "compute_unit": "NPU", "kind": kind,
            "p50_ms": round(point, 4), "interval_ms": [round(point * math.exp(lo), 4), round(point * math.exp(hi), 4)],
            "level": LEVEL, "models": stats["models"], "families": stats["families"],
            "median_ape": error["median_ape"], "p90_ape": error["p90_ape"], "held_out_error": error,
            "coverage": stats["coverage"], "widened": why, "nearest": nearest(f, data)}


def nearest(f: dict, data: Dataset, k: int = 3) -> list[dict]:
    """The k public models closest to `f` (log FLOPs, parameters, activations, nodes) and their latency."""
    cols = [NUMERIC.index(c) for c in NEAR]
    z = np.log1p(data.x[:, cols])
    std = z.std(axis=0) + 1e-9
    d = (((np.log1p(np.array([float(f[c]) for c in NEAR])) - z) / std) ** 2).sum(axis=1)
    return [{"model": data.models[i], "family": data.families[i], "gflops": round(float(data.x[i, cols[0]]), 3),
             "measured_ms": float(data.ms[i]), "job_id": data.jobs[i]} for i in np.argsort(d)[:k]]


def accuracy_context(runtime: str, precision: str) -> dict | None:
    """The public models' on-device vs torch top-1 at one runtime and precision (AI Hub numerics): the median
    drop in points and its range, as context for a prediction (not our model's accuracy)."""
    drops = [float(r["torch_value"]) - float(r["device_value"]) for r in _read(NUMERICS_FILE)
             if r["runtime"] == runtime and r["precision"] == precision and r["metric"] == "Top-1 Accuracy"]
    if not drops:
        return None
    return {"models": len(drops), "median_drop": round(float(np.median(drops)), 2),
            "range": [round(min(drops), 2), round(max(drops), 2)]}
