"""`manifold-edge` (also `python -m pipeline`): run, status, report, compare, targets, bench, schema.

Exit codes: 0 success, 2 a user error (one line naming the field and the fix), 1 an internal error,
3 `bench` measured nothing (every target failed), 130 interrupted (rerun the same command to resume), 141 the
reader of the output went away (`| head`), quietly.
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
from pipeline.core.fileio import out_of_space, write_text
from pipeline.core.logs import quiet_third_party

DEFAULT_CONFIG = "pipeline.toml"
RUN_LOG = "run.log"  # in the run's folder: what the libraries print during `run` (on stderr with --verbose)
NOTHING_MEASURED = 3  # `bench`: every measurement failed (a device refused, a runtime missing)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manifold-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"manifold-edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline (reusing cached stages)")
    status = sub.add_parser("status", help="each stage: cached, stale, missing, damaged or running, and why")
    for p in (run, status):
        p.add_argument("positional_config", nargs="?", metavar="CONFIG", help="deprecated: use --config CONFIG")
    run.add_argument("--force", metavar="STAGE", help="rerun STAGE and everything after it")
    run.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    run.add_argument("--nproc", type=int, metavar="N", help="train in N processes under torchrun (run.nproc)")
    run.add_argument("--verbose", action="store_true", help="show the libraries' own output on stderr (by "
                                                            "default it goes to <run folder>/run.log)")
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
    bench.add_argument("models", nargs="*", metavar="MODEL", help=f"model file(s) ({files}); give an fp32 and an "
                                                                  "INT8 file together for the INT8 diagnosis")
    bench.add_argument("--target", dest="targets", action="append", required=True, metavar="NAME",
                       help="a target profile (repeatable); see `manifold-edge targets`")
    for p in (run, status, targets, bench):
        p.add_argument("-c", "--config", metavar="FILE", help="pipeline.toml (default: ./pipeline.toml"
                                                              + (" when present)" if p in (targets, bench) else ")"))
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field, e.g. --set distill.epochs=3 (repeatable)")
    for p in (run, status, targets, report):
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")
    bench.add_argument("--json", nargs="?", const=True, default=None, metavar="PATH",
                       help="print one JSON document on stdout instead of the tables (--json PATH, writing a "
                            "file, is deprecated: use --json > PATH)")
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
            return _report(args.run_dir, args.out, args.json)
        if args.command == "compare":
            return _compare(args.run_a, args.run_b, args.out, args.json)
        config = _config_path(args)
        if args.command in ("targets", "bench"):
            return _targets_or_bench(args, config)
        nproc = getattr(args, "nproc", None)
        if nproc is not None and nproc < 1:
            raise UserError(f"--nproc {nproc}: give at least 1 process (--nproc N sets run.nproc)")
        cfg = load_config(config or DEFAULT_CONFIG,
                          [*args.overrides, *([f"run.nproc={nproc}"] if nproc is not None else [])])
        if args.command == "status":
            return _status(cfg, args.json)
        return _run(cfg, args, argv)
    except UserError as exc:
        _ending()
        return _fail(2, f"error: {exc}")
    except KeyboardInterrupt as exc:
        _ending()
        return _fail(exits.INTERRUPTED, exits.interrupted_message(exc))
    except BrokenPipeError:  # the reader of our output went away (`manifold-edge ... | head`): no error of ours
        return _reader_gone()
    except Exception as exc:  # an internal error (show where, so it can be reported), or a full disk
        _ending()
        message = os_error_message(exc, cfg.run.output_dir if cfg else None)
        if message:
            return _fail(2, f"error: {message}")
        return _fail(1, traceback.format_exc() + "internal error: please report it with the traceback above")


def _reader_gone() -> int:
    """Exit as a shell does for SIGPIPE (128 + 13), quietly: stdout is pointed at /dev/null so that the
    interpreter's flush at exit finds no closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _config_path(args) -> str | None:
    """--config FILE, or the deprecated positional CONFIG of run and status (one line on stderr saying so)."""
    given = getattr(args, "positional_config", None)
    if given is None:
        return args.config
    if args.config is not None:
        raise UserError(f"config given twice ({given!r} and --config {args.config!r}): give only --config FILE")
    _deprecated(f"`{args.command} CONFIG` is deprecated: use `{args.command} --config {given}`")
    return given


def _deprecated(message: str) -> None:
    """Once per command: not again in the processes that `run --nproc` starts (they get the same arguments)."""
    if os.environ.get("RANK", "0") == "0" and exits.FOLDER_ENV not in os.environ:
        print(message, file=sys.stderr)


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


def _report(run_dir: str, out: str | None, as_json: bool) -> int:
    from pathlib import Path

    from pipeline.core.lock import run_lock
    from pipeline.documents import ReportDocument, ship_document
    from pipeline.report.build import check_run_folder, rebuild_report
    from pipeline.report.markdown import ship_summary

    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: no such run folder; give runs/<name> of a finished run")
    check_run_folder(Path(run_dir))  # before the lock: a folder that is not a run is left as it was
    with run_lock(Path(run_dir)):
        report = rebuild_report(Path(run_dir), Path(out) if out else None)
    print(f"rebuilt {Path(run_dir) / 'report.html'}, report.md, report.json and plots/ from the artifacts",
          file=sys.stderr)
    print(ship_document(report, Path(run_dir), ReportDocument).dump() if as_json else "\n".join(ship_summary(report)))
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


def _targets_or_bench(args, config: str | None) -> int:
    from pathlib import Path

    from rich.console import Console

    from pipeline.device_commands import (
        backends_by_suffix,
        bench,
        bench_tables,
        targets_document,
        targets_notes,
        targets_tables,
    )
    from pipeline.tables import show

    cfg = load_config(config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None), args.overrides)
    if args.command == "targets":
        doc = targets_document(cfg)
        if args.json:
            print(doc.dump())
            return 0
        show(targets_tables(doc))
        print("\n".join(targets_notes(doc)), file=sys.stderr)
        return 0
    json_path = args.json if isinstance(args.json, str) else None
    if json_path and Path(json_path).suffix in backends_by_suffix():  # `bench --json MODEL ...`: a model, not a PATH
        args.models, json_path, args.json = [json_path, *args.models], None, True
    if not args.models:
        raise UserError("bench: give at least one model file: manifold-edge bench MODEL... --target NAME")
    doc = bench(cfg, args.models, args.targets, Console(stderr=True), json_path)
    if json_path:
        write_text(Path(json_path), doc.dump() + "\n")
        print(f"wrote {json_path} (--json PATH is deprecated: use --json > {json_path})", file=sys.stderr)
    if args.json is True:
        print(doc.dump())
    else:
        show(bench_tables(doc))
    if not doc.predicted and not any("latency_ms" in row for row in doc.rows):
        print(f"error: nothing was measured: all {len(doc.rows)} measurement(s) failed (each row's error "
              "says why)", file=sys.stderr)
        return NOTHING_MEASURED
    return 0


def _status(cfg, as_json: bool) -> int:
    from pipeline.documents import StageState, StatusDocument
    from pipeline.graph import Pipeline
    from pipeline.tables import Column, Table, show

    pipeline = Pipeline(cfg)
    stages = [StageState(stage=s.name, state=s.state, key=s.key, why=s.reason,
                         artifact=str(pipeline.store.path(s.name, s.key)) if s.state == "cached" else None)
              for s in pipeline.status()]
    doc = StatusDocument(run=cfg.run.name, run_dir=str(pipeline.run_dir), stages=stages)
    if as_json:
        print(doc.dump())
        return 0
    colours = {"cached": "green", "stale": "yellow", "missing": "cyan", "damaged": "red", "running": "magenta"}
    table = Table(f"run '{doc.run}' ({doc.run_dir})", [Column("stage"), Column("state", styles=colours),
                                                         Column("key", wrap=False), Column("why"),
                                                         Column("artifact")])
    table.rows = [[s.stage, s.state, s.key[:16], s.why, s.artifact or ""] for s in doc.stages]  # the folder's id
    show([table])
    return 0


def _run(cfg, args, argv: list[str]) -> int:
    from pipeline.api import execute, prepare
    from pipeline.core import distributed
    from pipeline.core.capture import library_output_to
    from pipeline.core.progress import Progress
    from pipeline.documents import ship_document
    from pipeline.report.markdown import ship_summary

    pipeline = prepare(cfg, args.force, args.until, args.out)  # config problems: before any stage or process
    if cfg.run.nproc > 1 and not distributed.under_launcher():
        code, message = distributed.launch(cfg.run.nproc, argv, cfg.run.threads)
        if message:
            print(message, file=sys.stderr)
        return code
    log = None if args.verbose else pipeline.run_dir / RUN_LOG
    quiet = not distributed.world().main
    with library_output_to(log, f"manifold-edge {' '.join(argv)}") as streams:
        report = execute(pipeline, cfg, args.force, args.until, args.out, Progress(quiet=quiet, file=streams.err))
    if report is not None:
        print(ship_document(report, pipeline.run_dir).dump() if args.json else "\n".join(ship_summary(report)))
    return 0
