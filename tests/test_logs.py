"""Stage code logs records; a run's Progress shows them on its console, one unwrapped line each, styled by level;
the libraries' own output goes to the run's log."""
from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from pipeline.core.capture import library_output_to
from pipeline.core.progress import Progress


def _console(buffer: io.StringIO, colour: bool = False) -> Console:
    return Console(file=buffer, width=40, force_terminal=colour, color_system="standard" if colour else None)


def _lines(buffer: io.StringIO) -> list[str]:
    """What was printed, less the progress display's own blank line and cursor codes."""
    lines = (re.sub(r"\x1b\[(\?25[lh]|2K)", "", line) for line in buffer.getvalue().splitlines())
    return [line for line in lines if line.strip()]


def test_a_stage_record_is_one_indented_literal_line_on_the_run_console():
    buffer = io.StringIO()
    message = "evaluate: " + "a long record " * 10 + "with [bold]brackets[/] from a path"
    with Progress(_console(buffer)):
        logging.getLogger("stages.evaluate").info(message)
    assert _lines(buffer) == [f"  {message}"]  # not wrapped at 40 columns, no markup read


def test_warnings_and_errors_are_coloured_and_debug_is_not_shown():
    buffer = io.StringIO()
    with Progress(_console(buffer, colour=True)):
        logging.getLogger("targets.latency").warning("over budget")
        logging.getLogger("stages.quantize").error("flagged")
        logging.getLogger("stages.quantize").debug("detail")
    lines = _lines(buffer)
    assert len(lines) == 2 and "\x1b[33m" in lines[0] and "\x1b[1;31m" in lines[1], lines


def test_the_console_is_released_when_the_run_ends():
    buffer = io.StringIO()
    logger = logging.getLogger("stages.teacher")
    level = logger.level
    with Progress(_console(buffer)):
        logger.info("during")
    logger.info("after")
    assert _lines(buffer) == ["  during"] and logger.level == level and not logger.handlers


def test_a_root_handler_a_library_installed_does_not_print_the_lines_twice():
    buffer, root_stream = io.StringIO(), io.StringIO()
    root_handler = logging.StreamHandler(root_stream)
    logging.getLogger().addHandler(root_handler)
    try:
        with Progress(_console(buffer)):
            logging.getLogger("stages.export").info("onnxruntime vs torch")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert _lines(buffer) == ["  onnxruntime vs torch"] and root_stream.getvalue() == ""


CAPTURED = """
import os, subprocess, sys, warnings
from pathlib import Path
from pipeline.core.capture import library_output_to

try:
    with library_output_to(Path(sys.argv[1]), "a test") as console:
        os.write(1, b"native stdout\\n")
        os.write(2, b"native stderr\\n")
        print("a library's print")
        warnings.warn("a library's warning")
        subprocess.run(["sh", "-c", "echo a child process"])
        print("our result", file=console.out)
        print("our progress", file=console.err)
        raise KeyboardInterrupt
except KeyboardInterrupt:
    print("after: stdout")
    print("after: stderr", file=sys.stderr)
"""


def test_library_output_goes_to_the_log_and_ours_to_the_console_until_an_interruption(tmp_path):
    log = tmp_path / "run" / "run.log"
    done = subprocess.run([sys.executable, "-c", CAPTURED, str(log)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert (done.stdout, done.stderr) == ("our result\nafter: stdout\n", "our progress\nafter: stderr\n")
    text = log.read_text()
    assert text.startswith("== ") and "a test" in text.splitlines()[0]
    for line in ("native stdout", "native stderr", "a library's print", "a library's warning", "a child process"):
        assert line in text


def test_nothing_is_captured_where_the_streams_are_not_the_descriptors(tmp_path, capsys):
    """Under pytest's capsys (or a notebook) sys.stderr is not fd 2: the streams are sys's own, no log is made."""
    with library_output_to(tmp_path / "run.log") as console:
        print("ours", file=console.err)
    assert capsys.readouterr().err == "ours\n" and not (tmp_path / "run.log").exists()


def test_without_a_log_the_library_output_is_shown_on_stderr_and_stdout_keeps_ours(tmp_path):
    """`run --verbose`: the libraries' stdout joins their stderr; stdout carries our results only."""
    script = CAPTURED.replace("Path(sys.argv[1])", "None")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout == "our result\nafter: stdout\n"
    for line in ("native stdout", "native stderr", "a library's print", "a library's warning", "a child process",
                 "our progress", "after: stderr"):
        assert line in done.stderr
