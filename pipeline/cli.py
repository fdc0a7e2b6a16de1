"""`manifold-edge` (also `python -m pipeline`): run, status, report, compare, targets, bench, schema.

Exit codes: 0 success, 2 a user error (one line naming the field and the fix), 1 an internal error,
3 `bench` measured nothing (every target failed), 130 interrupted (rerun the same command to resume).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
import traceback

from pipeline import __version__
from pipeline.config import json_schema, load_config
from pipeline.core import exits
from pipeline.core.errors import UserError, clip
from pipeline.core.fileio import out_of_space
from pipeline.core.logs import quiet_third_party

DEFAULT_CONFIG = "pipeline.toml"
NOTHING_MEASURED = 3  # `bench`: every measurement failed (a device refused, a runtime missing)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manifold-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"manifold-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline (reusing cached stages)")
    status = sub.add_parser("status", help="each stage: cached, stale, missing, damaged or running, and why")
    for p in (run, status):
        p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="pipeline.toml (default: %(default)s)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set distill.epochs=3 (repeatable)")
    run.add_argument("--force", metavar="STAGE", help="rerun STAGE and everything after it")
    run.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    run.add_argument("--nproc", type=int, metavar="N", help="train in N processes under torchrun (run.nproc)")
    report = sub.add_parser("report", help="rebuild a run's report.json/.md/.html and plots from its artifacts")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/default")
    for p in (run, report):
        p.add_argument("--out", metavar="DIR", help="write the deploy folders (one per target) to DIR instead of "
                                                    "<run folder>/deploy")
    compare = sub.add_parser("compare", help="two runs side by side (config changes, accuracy, latency)")
    compare.add_argument("run_a", metavar="RUN_A")
    compare.add_argument("run_b", metavar="RUN_B")
    compare.add_argument("--out", metavar="DIR", help="also write DIR/compare.md and DIR/compare.html")
    compare.add_argument("--json", action="store_true", help="print the comparison as one JSON document instead")
    targets = sub.add_parser("targets", help="list the target profiles (built-in and [targets.NAME])")
    from backends import backends  # loaded with the config's schema already: their suffixes for bench's help

    files = ", ".join(suffix for backend in backends() for suffix in backend.suffixes)
    bench = sub.add_parser("bench", help=f"profile model files ({files}) on targets")
    bench.add_argument("models", nargs="+", metavar="MODEL", help=f"model file(s) ({files}); give an fp32 and an "
                                                                  "INT8 file together for the INT8 diagnosis")
    bench.add_argument("--target", dest="targets", action="append", required=True, metavar="NAME",
                       help="a target profile (repeatable); see `manifold-edge targets`")
    bench.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    for p in (targets, bench):
        p.add_argument("--config", default=None, help="pipeline.toml with [targets.NAME] / [benchmark] "
                                                      "(default: ./pipeline.toml when present)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set benchmark.runs=50")
    sub.add_parser("schema", help="print the JSON Schema of pipeline.toml")
    return parser


def _terminate(signum, frame) -> None:
    """SIGTERM stops like Ctrl-C (partial work stays resumable), once: a second SIGTERM (torchrun's agent
    stopping a rank twice) must not cut short the saving and the exit record with a traceback."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    quiet_third_party()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _command(args, argv)
    finally:  # a SIGTERM after the command (a launcher stopping ranks while they exit) must not raise at exit
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _command(args, argv: list[str]) -> int:
    cfg = None
    try:
        if args.command == "schema":
            print(json.dumps(json_schema(), indent=2))
            return 0
        if args.command == "report":
            return _report(args.run_dir, args.out)
        if args.command == "compare":
            return _compare(args.run_a, args.run_b, args.out, args.json)
        if args.command in ("targets", "bench"):
            return _targets_or_bench(args)
        nproc = getattr(args, "nproc", None)
        if nproc is not None and nproc < 1:
            raise UserError(f"--nproc {nproc}: give at least 1 process (--nproc N sets run.nproc)")
        cfg = load_config(args.config, [*args.overrides, *([f"run.nproc={nproc}"] if nproc is not None else [])])
        if args.command == "status":
            return _status(cfg)
        return _run(cfg, args.force, args.until, args.out, argv)
    except UserError as exc:
        _ending()
        return _fail(2, f"error: {exc}")
    except KeyboardInterrupt as exc:
        _ending()
        return _fail(exits.INTERRUPTED, exits.interrupted_message(exc))
    except Exception as exc:  # an internal error (show where, so it can be reported), or a full disk
        _ending()
        message = os_error_message(exc, cfg.run.output_dir if cfg else None)
        if message:
            return _fail(2, f"error: {message}")
        return _fail(1, traceback.format_exc() + "internal error: please report it with the traceback above")


def os_error_message(exc: BaseException, output_dir: str | None) -> str | None:
    """The one-line message for an OS error the user can fix (a path too long, a full disk), else None."""
    if getattr(exc, "errno", None) == errno.ENAMETOOLONG:  # a path from the config, longer than the OS takes
        name = clip(str(getattr(exc, "filename", None) or ""), 120)
        return (f"file name too long: {name!r}: shorten the path in the config (a name of at most 255 bytes per "
                "folder)")
    if out_of_space(exc):
        where = getattr(exc, "filename", None) or output_dir or "this disk"
        return (f"disk full (writing under {where}): free space there and rerun the same command to resume; "
                "completed stages are kept")
    return None


def _ending() -> None:
    """The command is failing: from here a launcher's SIGTERM (torchrun stopping the other ranks after one
    failed) must not cut short this process's message and exit record, or it would look as if it had died
    without a word and be blamed for the failure (seen: a rank formatting its lost-connection traceback)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _fail(code: int, message: str) -> int:
    """Say why the command stops, once: a process of `run --nproc` leaves it to the launcher, and under a
    user's own torchrun rank 0 speaks for all."""
    if not exits.record(code, message) and os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)
    return code


def _report(run_dir: str, out: str | None) -> int:
    from pathlib import Path

    from pipeline.core.lock import run_lock
    from pipeline.report.build import check_run_folder, rebuild_report
    from pipeline.report.markdown import ship_summary

    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such run folder; give runs/<name> of a finished run")
    check_run_folder(Path(run_dir))  # before the lock: a folder that is not a run is left as it was
    with run_lock(Path(run_dir)):
        report = rebuild_report(Path(run_dir), Path(out) if out else None)
    print(f"rebuilt {Path(run_dir) / 'report.html'}, report.md, report.json and plots/ from the artifacts")
    print("\n".join(ship_summary(report)))
    return 0


def _compare(run_a: str, run_b: str, out: str | None, as_json: bool) -> int:
    from pipeline.compare import compare, out_files, render_markdown, write_comparison

    paths = out_files(out) if out else []  # a bad --out is refused before anything is printed
    result = compare(run_a, run_b)
    text = render_markdown(result)
    if as_json:
        print(json.dumps(result, indent=2))
    elif sys.stdout.isatty():
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(text))
    else:  # a pipe or a file: the markdown itself, every value whole
        print(text)
    write_comparison(text, paths, f"{run_a} vs {run_b}")
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _targets_or_bench(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from pipeline.device_commands import bench, list_targets

    config = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    cfg = load_config(config, args.overrides)
    if args.command == "targets":
        list_targets(cfg, Console())
        return 0
    result = bench(cfg, args.models, args.targets, Console(), args.json)
    if not result["predicted"] and not any("latency_ms" in row for row in result["rows"]):
        print(f"error: nothing was measured: all {len(result['rows'])} measurement(s) failed (the reasons are "
              "above)", file=sys.stderr)
        return NOTHING_MEASURED
    return 0


def _status(cfg) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipeline.graph import Pipeline

    pipeline = Pipeline(cfg)
    table = Table(title=f"run '{cfg.run.name}' ({pipeline.run_dir})")
    for column in ("stage", "state", "key", "why", "artifact"):
        table.add_column(column, overflow="fold")
    colours = {"cached": "green", "stale": "yellow", "missing": "cyan", "damaged": "red", "running": "magenta"}
    for s in pipeline.status():
        path = str(pipeline.store.path(s.name, s.key)) if s.state == "cached" else ""
        table.add_row(s.name, f"[{colours[s.state]}]{s.state}[/]", s.key[:12], s.reason, path)
    Console().print(table)
    return 0


def _run(cfg, force: str | None, until: str | None, out: str | None, argv: list[str]) -> int:
    from pipeline.api import execute, prepare
    from pipeline.core import distributed

    pipeline = prepare(cfg, force, until, out)  # config problems: before any stage runs or any process starts
    if cfg.run.nproc > 1 and not distributed.under_launcher():
        code, message = distributed.launch(cfg.run.nproc, argv, cfg.run.threads)
        if message:
            print(message, file=sys.stderr)
        return code
    execute(pipeline, cfg, force, until, out)
    return 0
