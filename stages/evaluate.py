"""Evaluate stage: every artifact run in its own runtime over the whole held-out split, batched.

Teacher and student (torch): top-1/top-5, params, FLOPs, checkpoint size. Every exported and
quantized student (Core ML on Linux: simulated by running the package's own ML program in torch):
top-1, the change vs torch fp32, argmax agreement with torch fp32, size on disk, and for compressed
artifacts the classes compression hurts most. A Core ML package the simulation cannot run gets a row
with "evaluation": "not simulated" and a "reason", and no top-1. With `arm64` on, the files of the emulated arm64
targets' runtimes also run on those cores (targets/arm64.py) over a fixed subset. torch and the runtimes are
imported where the stage runs, so the engine starts without them.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, field_validator

import backends
from pipeline.core.fileio import read_json, write_json
from pipeline.core.intervals import wilson
from pipeline.core.section import Section, not_in_key
from pipeline.core.stage import Stage, StageContext

if TYPE_CHECKING:
    from backends.base import NotRunHere

log = logging.getLogger(__name__)


class EvaluateConfig(Section):
    batch_size: int = Field(256, ge=1, description="batch size for running every artifact")
    threads: int = not_in_key(0, "runtime threads; 0 = the CPU cores shared out between the jobs (with one "
                                 "job: the runtime's default)", ge=0)
    jobs: int = not_in_key(0, "artifacts evaluated at once; 0 = one per CPU core", ge=0)
    arm64: Literal["auto", "on", "off"] = Field(
        "off", description="accuracy of the files of `arm64_targets`' runtimes on their emulated arm64 cores (the "
                           "aarch64 runtimes under QEMU, `make arm64`): on, off, or auto = on where the root is built "
                           "(resolved as the config loads: building the root reruns this stage)")
    arm64_targets: list[str] = Field(default_factory=lambda: ["android-phone-arm64", "wearos-watch-arm64"],
                                     description="targets with connection = 'arm64-emulated' (docs/targets.md)")
    arm64_images: int = Field(500, ge=1, description="test images run on each emulated core (a fixed random "
                                                      "subset); top-1 and agreement come with their 95% interval")

    @field_validator("arm64")
    @classmethod
    def _resolve_auto(cls, value: str) -> str:
        from targets.arm64 import usable

        return ("on" if usable() else "off") if value == "auto" else value


def score_model(model_file: Path, data, device: str) -> dict:
    from stages.flops import flops_per_image
    from stages.models import load_model
    from stages.training import accuracy

    model, record = load_model(model_file)
    shape = tuple(data.test.images.shape[1:])
    flops = flops_per_image(model, shape)
    top = accuracy(model.to(device), data.test, device, topk=(1, 5))
    return {"model": record["model"], "top1": round(top[1], 3), "top5": round(top[5], 3),
            "params": sum(p.numel() for p in model.parameters()), "flops": flops,
            "checkpoint_bytes": model_file.stat().st_size}


def torch_logits(model_file: Path):
    """The checkpoint's fp32 logits for a float32 NCHW batch, on the CPU (a reference for other runtimes)."""
    import torch

    from stages.models import load_model

    model = load_model(model_file)[0].eval()

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return logits


def chance_warnings(result: dict, classes: int) -> list[str]:
    """A line for the teacher or student whose test top-1 cannot be told from guessing: chance (100 / classes)
    within or above its 95% interval. A student distilled from such a teacher learns nothing from it."""
    chance, images, warnings = 100 / classes, result["images"], []
    fixes = {"teacher": "train it longer (teacher.epochs, teacher.lr), check the data and its labels, or load "
                        "trained weights (teacher.pretrained / teacher.checkpoint)",
             "student": "train it longer (distill.epochs, distill.lr) and check the teacher and the data"}
    for role, fix in fixes.items():
        top1 = result[role]["top1"]
        low, high = wilson(round(top1 * images / 100), images)
        if low <= chance:
            warnings.append(f"the {role} {result[role]['model']} scores {top1:.2f}% top-1 on {images} test images "
                            f"of {classes} classes (95% interval {low:.1f}-{high:.1f}%): no better than guessing "
                            f"({chance:.1f}%); {fix}")
    return warnings


def per_class_top1(predictions: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    return np.array([100 * (predictions[labels == c] == c).mean() if (labels == c).any() else np.nan
                     for c in range(classes)])


_LOADING = threading.Lock()


class EvaluateStage(Stage):
    name = "evaluate"
    sections = ("evaluate", "targets")
    inputs = ("data", "teacher", "distill", "export", "quantize")
    uses_seed = False
    scripts = backends.modules("runner")  # the backends' code, reached through the registry

    @classmethod
    def check(cls, cfg, world_size: int) -> None:
        if cfg.evaluate.arm64 == "on":
            from targets.arm64 import check_config

            check_config(cfg.evaluate.arm64_targets, cfg.targets)

    def run(self, ctx: StageContext) -> dict:
        import torch

        from stages.batches import load_dataset

        cfg: EvaluateConfig = ctx.config["evaluate"]
        data = load_dataset(ctx.inputs["data"])
        cores = os.cpu_count() or 1
        jobs = cfg.jobs or cores
        threads = cfg.threads or (max(1, cores // jobs) if jobs > 1 else 0)
        result = {"split": "test", "images": len(data.test)}
        restore = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            with ThreadPoolExecutor(jobs) as pool:  # runtimes release the GIL: one thread each beats two per op
                described = {role: pool.submit(score_model, ctx.inputs[stage] / "model.pt", data, ctx.device)
                             for role, stage in (("teacher", "teacher"), ("student", "distill"))}
                rows = self._artifacts(ctx, cfg, data, pool, threads)
                for role, done in described.items():
                    result[role] = r = done.result()
                    log.info(f"{role} {r['model']}: test top-1 {r['top1']:.2f}%, top-5 {r['top5']:.2f}%, "
                             f"{r['params'] / 1e6:.3f} M params, {r['flops'] / 1e6:.1f} MFLOPs")
        finally:
            torch.set_num_threads(restore)
        result["warnings"] = chance_warnings(result, len(data.meta["classes"]))
        for warning in result["warnings"]:
            log.warning(warning)
        result["artifacts"] = self._log(rows)
        if cfg.arm64 == "on":
            from targets.arm64 import stage_accuracy

            result["arm64"] = stage_accuracy(ctx.inputs, data.test, cfg.arm64_targets, ctx.config["targets"],
                                             cfg.arm64_images, torch_logits(ctx.inputs["distill"] / "model.pt"))
        write_json(ctx.out / "metrics.json", result)
        return result

    @staticmethod
    def _predictions(path: Path, threads: int, data, batch_size: int) -> tuple[str, np.ndarray] | NotRunHere:
        from backends import load_runner
        from backends.base import NotRunHere, predict

        if path.suffix == ".pt":  # the trained checkpoint itself: torch is no backend (nothing exports to it)
            runner, evaluation = torch_logits(path), "measured"
        else:
            try:
                with _LOADING:  # coremltools' graph passes share state between threads: one load at a time
                    runner = load_runner(path, threads)
            except NotRunHere as exc:  # a row without top-1, saying why
                return exc
            evaluation = runner.evaluation
        return evaluation, predict(runner, (x.numpy() for x, _ in data.test.iterate(batch_size))).argmax(1)

    def _artifacts(self, ctx: StageContext, cfg: EvaluateConfig, data, pool: ThreadPoolExecutor,
                   threads: int) -> list[dict]:
        from backends import artifact_bytes
        from backends.base import NotRunHere
        from pipeline.core.numerics import floating

        labels = data.test.labels.numpy()
        classes = data.meta["classes"]
        files = [("torch_fp32", ctx.inputs["distill"] / "model.pt", "torch", "fp32", {"numerics": floating("fp32")},
                  "distill")]
        for stage in ("export", "quantize"):
            for key, a in read_json(ctx.inputs[stage] / f"{stage}.json")["artifacts"].items():
                files.append((key, ctx.inputs[stage] / a["file"], a["runtime"], a["precision"], a, stage))
        with ctx.progress.bar(f"  evaluating {len(files)} artifacts", len(files), unit="artifact") as bar:
            futures = [pool.submit(self._predictions, path, threads, data, cfg.batch_size) for _, path, *_ in files]
            for _ in as_completed(futures):
                bar.advance()
        rows, reference, reference_class = [], None, None
        for (key, path, runtime, precision, meta, stage), done in zip(files, futures):
            outcome = done.result()
            base = {"artifact": key, "runtime": runtime, "precision": precision, "numerics": meta["numerics"],
                    "file": path.name}
            if isinstance(outcome, NotRunHere):
                rows.append({**base, "evaluation": "not simulated", "reason": str(outcome),
                             "bytes": artifact_bytes(path), "op_types": meta.get("op_types")})
                continue
            evaluation, predictions = outcome
            top1 = float(100 * (predictions == labels).mean())
            by_class = per_class_top1(predictions, labels, len(classes))
            if reference is None:
                reference, reference_class, reference_top1 = predictions, by_class, top1
            row = {**base, "evaluation": evaluation,
                   "top1": round(top1, 3), "delta_top1": round(top1 - reference_top1, 3),
                   "agreement": round(float((predictions == reference).mean()), 5),
                   "bytes": artifact_bytes(path), "op_types": meta.get("op_types")}
            if stage == "quantize":
                delta = by_class - reference_class
                worst = np.argsort(delta)[:3]
                row["worst_classes"] = [{"class": classes[c], "fp32": round(float(reference_class[c]), 2),
                                         "int8": round(float(by_class[c]), 2), "delta": round(float(delta[c]), 2)}
                                        for c in worst]
            rows.append(row)
        return rows

    @staticmethod
    def _log(rows: list[dict]) -> list[dict]:
        for row in rows:
            if "reason" in row:
                log.warning(f"{row['artifact']}: {row['reason']}")
            else:
                log.info(f"{row['artifact']} ({row['runtime']}, {row['precision']}, {row['evaluation']}): "
                         f"top-1 {row['top1']:.2f}% ({row['delta_top1']:+.2f}), "
                         f"agreement {100 * row['agreement']:.2f}%, {row['bytes'] / 1e6:.2f} MB")
        return rows
