"""The Python face of `manifold-edge run`, for notebooks and scripts: `from pipeline import run`."""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, load_config
from pipeline.core import distributed
from pipeline.core.errors import UserError, quote
from pipeline.core.fileio import unwritable, write_json
from pipeline.core.lock import run_lock
from pipeline.core.logs import quiet_third_party
from pipeline.core.progress import Progress
from pipeline.deploy import check_folder
from pipeline.graph import Pipeline, check_stage_options
from pipeline.report.build import build_report
from pipeline.report.markdown import ship_summary


def run(config: str | Path | dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = (), *,
        force: str | None = None, until: str | None = None, out: str | Path | None = None,
        quiet: bool = False) -> dict:
    """Run the pipeline in this process, reusing the cache like the CLI, and return report.json as a dict.

    `config`: a pipeline.toml path, a dict with the same tables, or None for the defaults; `overrides`:
    `section.key=value` strings as with `--set`; `force`, `until`, `out`: as the CLI's options. The
    deploy folder of each target is `report["deploy"][target]`. A config mistake raises UserError with the
    CLI's one-line message. Several processes (`run.nproc`) need the CLI, which launches them. `quiet`: no
    progress bars or log lines on the terminal; the stages' log records still reach any handler attached to
    the `stages` and `targets` loggers (during the run they do not propagate to the root logger). The last
    lines on stdout say what ships (unless `quiet`).
    """
    quiet_third_party()
    cfg = load_config(config, list(overrides))
    if cfg.run.nproc > 1:
        raise UserError("run.nproc > 1 starts processes under torchrun: use `manifold-edge run --nproc N`")
    pipeline = prepare(cfg, force, until, out)
    report = execute(pipeline, cfg, force, until, out, Progress(quiet=quiet or not distributed.world().main))
    if report is not None and not quiet:
        print("\n".join(ship_summary(report)))
    return report


def prepare(cfg: PipelineConfig, force: str | None, until: str | None, out: str | Path | None) -> Pipeline:
    """Every check that needs no stage to run: the options, the deploy folder, each stage's config."""
    check_stage_options(force, until)
    why = unwritable(Path(cfg.run.output_dir))
    if why:
        raise UserError(f"run.output_dir = {quote(cfg.run.output_dir)}: {why}; give a folder this user can write")
    pipeline = Pipeline(cfg)
    check_folder(Path(out) if out else pipeline.run_dir / "deploy")  # before hours of training, not after
    pipeline.check(until, force)  # the device, the config, the input files: before anything is written
    return pipeline


def execute(pipeline: Pipeline, cfg: PipelineConfig, force: str | None, until: str | None,
            out: str | Path | None, progress: Progress) -> dict | None:
    """Run (or reuse) the stages, showing them on `progress`, and write the report and deploy folders; the
    report on rank 0, None on the other processes of a multi-process run."""
    here = distributed.world()
    start = time.perf_counter()
    try:
        with run_lock(pipeline.run_dir) if here.main else nullcontext(), progress:
            if not here.main:
                pipeline.run(progress, force=force, until=until)
                return None
            write_json(pipeline.run_dir / "config.json", cfg.model_dump(mode="json"))
            records = pipeline.run(progress, force=force, until=until)
            report = build_report(cfg, records, pipeline.run_dir, time.perf_counter() - start, pipeline.device,
                                  Path(out) if out else None)
            progress.log(f"report: {pipeline.run_dir / 'report.html'} (also report.md, report.json) "
                         f"({report['run']['wall_s']:.0f} s)")
    except BaseException:
        if here.main:
            _tidy(pipeline)
        raise
    return report


def _tidy(pipeline: Pipeline) -> None:
    """After a failed run: the config.json of a run folder that never finished a run, and the run, lock and
    cache folders left empty, go (a stage's checkpoint, an earlier run's files and every artifact stay)."""
    if not pipeline.state_path.exists():
        (pipeline.run_dir / "config.json").unlink(missing_ok=True)
    for folder in (pipeline.run_dir, pipeline.store.root / ".locks", pipeline.store.root):
        try:
            folder.rmdir()  # only an empty folder
        except OSError:
            pass
