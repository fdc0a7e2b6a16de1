"""The JSON documents the verbs print with `--json`: one document on stdout, its kind and version under
"schema" (`manifold-edge/<verb>/<version>`). docs/cli.md's reference is generated from these models
(`python -m pipeline.docs`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def _kind(verb: str) -> Any:
    return Field(f"manifold-edge/{verb}/1", alias="schema", description="the document's kind and version")


class Document(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    def dump(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


class StageState(BaseModel):
    """One stage of the run."""
    stage: str = Field(description="the stage's name, in run order")
    state: Literal["cached", "stale", "missing", "damaged", "running"] = Field(description="what a run would do")
    key: str = Field(description="the stage's full cache key")
    why: str = Field(description="why it is in that state (the config fields or code files that changed, ...)")
    artifact: str | None = Field(description="the cached artifact's folder (cached stages only)")


class StatusDocument(Document):
    """`status --json`: each stage's state."""
    schema_: Literal["manifold-edge/status/1"] = _kind("status")
    run: str = Field(description="run.name")
    run_dir: str = Field(description="the run's folder")
    stages: list[StageState] = Field(description="every stage, in run order")


class TargetEntry(BaseModel):
    """One target profile."""
    name: str = Field(description="the profile's name (`--target NAME`, `benchmark.targets`)")
    device: str = Field(description="the device it stands for")
    runtime: str = Field(description="the runtime its app links first")
    runtimes: list[str] = Field(description="every runtime an app on it may link")
    precision: str = Field(description="the precision it prefers")
    threads: int = Field(description="threads the runtime uses")
    latency_budget_ms: float = Field(description="p90 budget at batch 1, ms")
    memory_budget_mb: float = Field(description="the memory budget the model adds, MB")
    connection: str = Field(description="how it is reached: local, ssh, adb, predicted, arm64-emulated")
    reached_by: str = Field(description="the same in words (`ssh user@host`, `this host (proxy)`, ...)")
    source: Literal["built-in", "pipeline.toml"] = Field(description="where the profile is declared")
    description: str = Field(description="the profile's description")


class TargetsDocument(Document):
    """`targets --json`: the target profiles."""
    schema_: Literal["manifold-edge/targets/1"] = _kind("targets")
    builtin_file: str = Field(description="the built-in profiles' file")
    targets: list[TargetEntry] = Field(description="built-in profiles, then the config's [targets.NAME]")


class BenchDocument(Document):
    """`bench --json`: every number measured or predicted (also what the deprecated `--json PATH` writes)."""
    schema_: Literal["manifold-edge/bench/1"] = _kind("bench")
    rows: list[dict[str, Any]] = Field(description="one row per model x timed target, as in the benchmark stage's "
                                                   "latency.json (docs/reports.md); an `error` where it failed")
    predicted: list[dict[str, Any]] = Field(description="one row per model x predicted target (NPU latency "
                                                        "predicted from public measurements)")


class ShipChoice(BaseModel):
    """The file an app that links one runtime ships on one target."""
    artifact: str | None = Field(description="the artifact (e.g. `onnx_int8_static`); null: nothing ships")
    precision: str | None = Field(description="its precision and quantization")
    top1: float | None = Field(description="its top-1 on the test split, %")
    p50_ms: float | None = Field(description="its median batch-1 latency on the target, ms (null: not timed)")
    p50_interval: list[float] | None = Field(description="the median's 95% interval, ms")
    p90_ms: float | None = Field(description="its p90 latency, ms")
    latency: str | None = Field(description="how the latency was had: proxy, measured, predicted, needs-device...")
    folder: str | None = Field(description="its deploy folder: the model, labels.txt, preprocess.json, MODEL_CARD.md")
    why: str = Field(description="why this file (or why none)")


class ShipTarget(BaseModel):
    """What ships on one target."""
    runtime: str | None = Field(description="the overall pick's runtime (null: nothing ships)")
    artifact: str | None = Field(description="the overall pick")
    tie: bool = Field(description="no runtime is faster than the others beyond noise: the tie went by the stated "
                                  "order")
    why: str = Field(description="why the overall pick")
    by_runtime: dict[str, ShipChoice] = Field(description="per runtime (SDK) an app on the target may link: the "
                                                          "file it ships")


class RunDocument(Document):
    """`run --json`: what ships, where the report and the deploy folders are."""
    schema_: Literal["manifold-edge/run/1"] = _kind("run")
    run_dir: str = Field(description="the run's folder")
    report: dict[str, str] = Field(description="the report's files: html, md, json")
    wall_s: float = Field(description="the run's wall time, s (for `report`: the run's)")
    deploy: dict[str, str] = Field(description="per target, its deploy folder (one subfolder per runtime)")
    ship: dict[str, ShipTarget] = Field(description="per target, what ships")


class ReportDocument(RunDocument):
    """`report --json`: the same as `run --json`, for the rebuilt report."""
    schema_: Literal["manifold-edge/report/1"] = _kind("report")  # type: ignore[assignment]


DOCUMENTS: list[type[Document]] = [StatusDocument, TargetsDocument, BenchDocument, RunDocument, ReportDocument]


def ship_document(report: dict, run_dir: Path, kind: type[RunDocument] = RunDocument) -> RunDocument:
    """A finished run's report.json as `run --json` / `report --json` prints it."""
    deploy = report.get("deploy") or {}
    ship = {}
    for name, answer in (report.get("ship") or {}).items():
        by_runtime = {}
        for runtime, c in answer["by_runtime"].items():
            lat = c.get("latency_ms") or {}
            by_runtime[runtime] = ShipChoice(
                artifact=c.get("artifact"), precision=c.get("precision"), top1=c.get("top1"), p50_ms=lat.get("p50"),
                p50_interval=lat.get("p50_interval"), p90_ms=lat.get("p90"), latency=c.get("label"),
                folder=str(Path(deploy[name]) / runtime) if c.get("artifact") and name in deploy else None,
                why=c.get("why", ""))
        tie = bool(answer.get("artifact")) and not answer["separated"]
        ship[name] = ShipTarget(runtime=answer.get("overall"), artifact=answer.get("artifact"), tie=tie,
                                why=answer["overall_why"], by_runtime=by_runtime)
    files = {suffix: str(run_dir / f"report.{suffix}") for suffix in ("html", "md", "json")}
    return kind(run_dir=str(run_dir), report=files, wall_s=report["run"]["wall_s"], deploy=deploy, ship=ship)
