"""The stage graph: cache keys, what to rerun and why (`status`), and running the stages in order."""
from __future__ import annotations

import importlib
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.core import distributed, exits
from pipeline.core.errors import UserError, clip
from pipeline.core.fileio import read_json, write_json
from pipeline.core.lock import clear_progress, holder, live_progress, record_progress, wait_lock
from pipeline.core.progress import Progress
from pipeline.core.stage import Accel, Stage, StageContext
from pipeline.fingerprint import code_digest, code_fingerprint, data_fingerprint
from pipeline.store import ArtifactStore, cache_key

# Stage name -> implementing class, in run order (every stage's inputs come before it).
STAGES = {
    "data": "stages.data:DataStage",
    "teacher": "stages.teacher:TeacherStage",
    "distill": "stages.distill:DistillStage",
    "export": "stages.export:ExportStage",
    "quantize": "stages.quantize:QuantizeStage",
    "evaluate": "stages.evaluate:EvaluateStage",
    "benchmark": "stages.benchmark:BenchmarkStage",
}


def stage_class(name: str) -> type[Stage]:
    module, _, attr = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def stage_code(name: str) -> dict[str, str]:
    """{file: hash} of the code (and the data files) that compute the stage's artifact."""
    cls = stage_class(name)
    return {**code_fingerprint(STAGES[name].partition(":")[0], cls.scripts), **data_fingerprint(cls.data)}


def check_stage_name(name: str | None, option: str) -> None:
    if name is not None and name not in STAGES:
        raise UserError(f"{option} {clip(repr(name), 60)}: no such stage; stages are {', '.join(STAGES)}")


def check_stage_options(force: str | None, until: str | None) -> None:
    """`--force` and `--until` name stages, and a forced stage is one the run reaches."""
    check_stage_name(force, "--force")
    check_stage_name(until, "--until")
    names = list(STAGES)
    if force and until and names.index(force) > names.index(until):
        raise UserError(f"--force {force} with --until {until}: the run stops before {force}, so nothing would be "
                        f"forced; drop --force, or use --until {force} (or a later stage)")


def forced_stages(force: str | None) -> set[str]:
    """The stages `--force STAGE` reruns: STAGE and every one after it."""
    names = list(STAGES)
    return set(names[names.index(force):]) if force else set()


@dataclass
class PlannedStage:
    name: str
    cls: type[Stage]
    key: str
    config: dict
    inputs: dict[str, str]
    code: dict[str, str]


@dataclass
class StageStatus:
    name: str
    state: str  # cached | stale | missing | damaged | running (another process is building it now)
    reason: str
    key: str


@dataclass
class RunRecord:
    name: str
    key: str
    cached: bool
    wall_s: float
    path: Path
    summary: dict = field(default_factory=dict)


class Pipeline:
    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.out_root = Path(cfg.run.output_dir).expanduser()
        self.run_dir = self.out_root / cfg.run.name
        self.store = ArtifactStore(self.out_root / ".cache")
        self.state_path = self.run_dir / "state.json"
        self.device = "cpu"

    def plan(self) -> list[PlannedStage]:
        keys: dict[str, str] = {}
        planned = []
        for name in STAGES:
            cls = stage_class(name)
            config = {section: self.cfg.section(section) for section in cls.sections}
            if cls.uses_seed:
                config["run.seed"] = self.cfg.run.seed
            if cls.distributed and self.world_size() > 1:  # DDP's result differs a little from one process's
                config["world_size"] = self.world_size()
            inputs = {dep: keys[dep] for dep in cls.inputs}
            code = stage_code(name)
            keys[name] = cache_key(name, code_digest(code), config, inputs)
            planned.append(PlannedStage(name, cls, keys[name], config, inputs, code))
        return planned

    def check(self, until: str | None = None, force: str | None = None) -> None:
        """The device, then for each stage up to `until` that will run (not reused from the cache; every stage on
        ranks other than 0) its config check and, on rank 0, its input files: raises UserError before anything is
        written. A cached stage passed its check when it was built (the same config makes the same key): a rerun
        with every stage cached builds no model and imports no torch to check them."""
        if self.cfg.run.device == "cuda":
            _resolve_device("cuda")
        main, forced = distributed.world().main, forced_stages(force)
        for stage in self.plan()[: list(STAGES).index(until) + 1 if until else None]:
            if main and stage.name not in forced and \
                    self.store.check(stage.name, stage.key, stage.cls.resumes)[0] == "cached":
                continue
            stage.cls.check(self.cfg, self.world_size())
            if main and getattr(stage.cls.check_files, "__func__", None) is not Stage.check_files.__func__:
                stage.cls.check_files(self.cfg)  # a stage that reads input files of its own

    def _previous(self) -> dict:
        """The last run's record of each stage (what its key was made of), {} when there is none or it is
        damaged (with a warning): it only explains cache decisions, the artifacts themselves are verified from
        the store, and a run writes it again."""
        if not self.state_path.is_file():
            return {}
        try:
            state = read_json(self.state_path)
            if not isinstance(state, dict) or not all(isinstance(v, dict) and "key" in v for v in state.values()):
                raise ValueError("not a record of stages")
            return state
        except (ValueError, UnicodeDecodeError) as exc:
            print(f"warning: {self.state_path} is unreadable ({type(exc).__name__}): ignored; the artifacts are "
                  "checked from the cache, and `run` writes it again", file=sys.stderr)
            return {}

    def status(self) -> list[StageStatus]:
        previous = self._previous()
        live = live_progress(self.run_dir)  # what the run holding this run folder is building now
        result = []
        for stage in self.plan():
            state, reason = self.store.check(stage.name, stage.key, stage.cls.resumes)
            before = previous.get(stage.name)
            if state == "missing" and before and before["key"] != stage.key:
                state, reason = "stale", _explain_change(before, stage)
            building = holder(self.store.lock_path(stage.name, stage.key)) if state != "cached" else None
            here = live if live and live.get("stage") == stage.name and state != "cached" else None
            if here and here.get("key") != stage.key:  # that run's settings are not this config's
                state, reason = "running", (f"running ({_progress_text(here)}) with other settings than this "
                                            f"config's (key {str(here.get('key'))[:12]}); for this config: {reason}")
            elif here:
                state, reason = "running", f"running ({_progress_text(here)}): a `run` is building it now"
            elif building:  # the lock, not its file: one left by a kill -9 is free
                state, reason = "running", f"running ({building}): a `run` is building it now"
            elif state != "cached":
                state, reason = _check_resume(self.store.partial(stage.name, stage.key), stage.cls.resumes,
                                              state, reason)
            result.append(StageStatus(stage.name, state, reason, stage.key))
        return result

    def world_size(self) -> int:
        """Processes of the distributed stages: torchrun's, or run.nproc before the launch."""
        return distributed.world().size if distributed.under_launcher() else self.cfg.run.nproc

    def run(self, progress: Progress, force: str | None = None, until: str | None = None) -> list[RunRecord]:
        """Run (or reuse) the stages in order. In a multi-process run every rank calls this: rank 0
        decides, locks and writes (and records the stage it builds for `status`); the others join the
        distributed stages, then return."""
        try:
            return self._run(progress, force, until)
        finally:
            if distributed.world().main:
                clear_progress(self.run_dir)

    def _run(self, progress: Progress, force: str | None, until: str | None) -> list[RunRecord]:
        self.device = device = _resolve_device(self.cfg.run.device)
        _set_threads(self.cfg.run.threads)
        here = distributed.start(device)
        names = list(STAGES)
        last = names.index(until) if until else len(names) - 1
        forced = forced_stages(force)
        plan = self.plan()[: last + 1]
        shared = max((i for i, s in enumerate(plan) if s.cls.distributed), default=-1) if here.size > 1 else last
        state = self._previous() if here.main else {}
        records: dict[str, RunRecord] = {}
        for index, stage in enumerate(plan, start=1):
            if index - 1 > shared:  # the other ranks' part is over
                distributed.stop()
                if not here.main:
                    break
            label = f"[{index}/{last + 1}] {stage.name}"
            waiting = f"{label}: another run is building this artifact; waiting"
            lock = wait_lock(self.store.lock_path(stage.name, stage.key), lambda w=waiting: progress.log(w)) \
                if here.main else nullcontext()
            with lock:
                records[stage.name] = self._stage(stage, label, forced, records, device, progress, here)
            if here.main:
                state[stage.name] = {"key": stage.key, "config": stage.config, "inputs": stage.inputs,
                                     "code": stage.code}
                write_json(self.state_path, state)
        distributed.stop()
        return list(records.values())

    def _stage(self, stage: PlannedStage, label: str, forced: set[str], records: dict[str, RunRecord], device: str,
               progress: Progress, here: distributed.World) -> RunRecord:
        """Reuse the cached artifact, or (re)build it; rank 0 decides and every rank gets its record."""
        cached = None
        if here.main:
            check, reason = self.store.check(stage.name, stage.key, stage.cls.resumes)
            if check == "cached" and stage.name not in forced:
                manifest = self.store.manifest(stage.name, stage.key)
                progress.log(f"{label}: reused, cached ({reason})")
                cached = RunRecord(stage.name, stage.key, True, manifest.get("wall_s", 0.0),
                                   self.store.path(stage.name, stage.key), manifest.get("summary", {}))
            else:
                if check == "damaged":
                    progress.log(f"[yellow]{label}: cached artifact damaged ({reason}); rerunning[/]")
                processes = f" in {here.size} processes" if stage.cls.distributed and here.size > 1 else ""
                progress.log(f"{label}: running{processes} ({'forced' if stage.name in forced else reason})")
                self.store.discard(stage.name, stage.key, partial=stage.name in forced)
                self.store.begin(stage.name, stage.key)
                record_progress(self.run_dir, stage=stage.name, key=stage.key)
        cached = distributed.from_main(cached)
        if cached:
            return cached
        watch = progress.watching(lambda unit, done, total: record_progress(
            self.run_dir, stage=stage.name, key=stage.key, unit=unit, done=done, total=total)) \
            if here.main else nullcontext()
        with watch:
            record = self._execute(stage, records, device, progress, here) \
                if here.main or stage.cls.distributed else None
        if here.main:
            clear_progress(self.run_dir)  # built: nothing is being built until the next stage starts
        record = distributed.from_main(record)
        progress.log(f"{label}: done in {record.wall_s:.1f} s")
        return record

    def _execute(self, stage: PlannedStage, done: dict[str, RunRecord], device: str, progress: Progress,
                 here: distributed.World) -> RunRecord | None:
        """Run the stage in its work folder; rank 0 commits the artifact and returns its record."""
        ctx = StageContext(
            config={section: getattr(self.cfg, section) for section in stage.cls.sections},
            inputs={dep: done[dep].path for dep in stage.cls.inputs},
            out=self.store.partial(stage.name, stage.key), seed=self.cfg.run.seed, device=device,
            progress=progress, key=stage.key, accel=Accel(self.cfg.run.compile, self.cfg.run.channels_last))
        start = time.perf_counter()
        try:
            summary = stage.cls().run(ctx)
        except BaseException as exc:
            if here.main:
                self.store.drop_if_empty(stage.name, stage.key)  # a resumable checkpoint stays
            if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, exits.StageInterrupted):
                raise exits.StageInterrupted(stage.name, bool(stage.cls.resumes)) from exc
            raise
        wall = time.perf_counter() - start
        if not here.main:
            return None
        manifest = {"stage": stage.name, "code": stage.code, "config": stage.config,
                    "inputs": stage.inputs, "summary": summary, "wall_s": round(wall, 2),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        path = self.store.commit(stage.name, stage.key, manifest, scratch=stage.cls.scratch)
        return RunRecord(stage.name, stage.key, False, wall, path, summary)


def _progress_text(record: dict) -> str:
    """`pid 4242, stage distill, epoch 3/10`: the unit counted is the one in progress."""
    text = f"pid {record.get('pid')}, stage {record.get('stage')}"
    if record.get("unit") and record.get("total"):
        text += f", {record['unit']} {min(record['done'] + 1, record['total'])}/{record['total']}"
    return text


def _check_resume(work: Path, resumes: tuple[str, ...], state: str, reason: str) -> tuple[str, str]:
    """'damaged' for a stage whose resumable checkpoint cannot be resumed from (not loadable weights-only, or
    not a training state): the next run warns, deletes it and starts the stage over."""
    for name in resumes:
        if (work / name).is_file():
            from stages.checkpoints import damage  # torch: only when there is a checkpoint to read

            why = damage(work / name)
            if why:
                return "damaged", f"{work.name}/{name} {why}: the next run deletes it and starts the stage over"
    return state, reason


def _explain_change(before: dict, stage: PlannedStage) -> str:
    changes = [f"{k}: {_short(v0)} -> {_short(v1)}" for k, (v0, v1) in
               _diff(flatten(before.get("config", {})), flatten(stage.config)).items()]
    if "code" not in before:
        changes.append("code changed (built by a version that did not record its code)")
    else:
        code = before["code"]
        edited = sorted(path for path in code.keys() | stage.code.keys() if code.get(path) != stage.code.get(path))
        if edited:
            changes.append(f"code changed ({', '.join(edited)})")
    changes += [f"input '{dep}' changed" for dep, key in stage.inputs.items()
                if before.get("inputs", {}).get(dep) != key]
    return "changed since the last run: " + "; ".join(changes or ["its cache key"])


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _diff(old: dict, new: dict) -> dict:
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("run.device = 'cuda' but torch sees no CUDA GPU: use 'auto' or 'cpu'")
    return device


def _set_threads(threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
