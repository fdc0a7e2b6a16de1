"""What each verb prints where: results on stdout (whole cells in a pipe, or one JSON document with --json),
our progress on stderr, the libraries' own lines in the run's log; the old spellings still work, saying so."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_devices import write_onnx

from conftest import TRAINED, artifact_folder, cli_args, folder_with_a_broken_image
from pipeline.cli import main
from pipeline.tables import Column, Table, show, tsv

ROOT = Path(__file__).resolve().parents[1]
# lines the libraries print during a default run (absl/TF, LiteRT, coremltools, ExecuTorch, torch's extension
# builder, JAX's fork warning, NNCF's progress bars)
LIBRARY = re.compile(r"I0000|port\.cc|flatbuffer_export|absl|XNNPACK delegate|\[WARNING\]|cpuinfo_utils|"
                     r"cpp_extension|os\.fork|JAX is multithreaded|Statistics collection|Applying |━")
STAGE_LINE = re.compile(r"\[\d+/\d+\] [a-z_]+: |  \S|report: ")  # the engine's lines, the stages' records
SHIP_LINE = re.compile(r"deploy: |  warning: |  [\w.-]+: (overall|nothing ships)|    app links ")


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`manifold-edge ARGS` with stdout and stderr pipes (not a terminal)."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def outcome(done: subprocess.CompletedProcess) -> list:
    """A finished call as JSON can hold it (what conftest.AFTER_TRAINED's functions return): [exit code, stdout,
    stderr]; subprocess.CompletedProcess(args, *outcome) makes it one again."""
    return [done.returncode, done.stdout, done.stderr]


def whole(done: subprocess.CompletedProcess) -> None:
    assert "…" not in done.stdout + done.stderr, done.stdout[-2000:]


def document(done: subprocess.CompletedProcess, verb: str) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)  # the whole of stdout is one document
    assert doc["schema"] == f"manifold-edge/{verb}/1"
    return doc


def tsv_rows(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]


def test_every_verb_in_a_pipe_prints_whole_cells_and_json_documents(tmp_path):
    args = cli_args(tmp_path, "run")
    assert main([*args, "--until", "data"]) == 0
    data = artifact_folder(tmp_path, "data")

    status = cli("status", *args[1:])
    whole(status)
    rows = tsv_rows(status.stdout)
    assert rows[0] == ["stage", "state", "key", "why", "artifact"] and all(len(r) == 5 for r in rows)
    assert ["data", "cached", data.name.split("-")[1]] == rows[1][:3] and rows[1][4] == str(data)
    doc = document(cli("status", *args[1:], "--json"), "status")
    assert [s["stage"] for s in doc["stages"]][:2] == ["data", "teacher"] and doc["stages"][0]["artifact"] == str(data)

    targets = cli("targets")
    whole(targets)
    profiles = tsv_rows(targets.stdout.split("\n\n")[0])
    assert profiles[0][:3] == ["name", "device", "runtimes"] and "this host (proxy)" in targets.stdout
    assert {"android-phone", "galaxy-s24-npu-tflite"} <= {r[0] for r in profiles}
    assert "built-in profiles:" in targets.stderr and "built-in profiles:" not in targets.stdout
    assert {t["name"] for t in document(cli("targets", "--json"), "targets")["targets"]} >= {"iphone"}

    model = write_onnx(tmp_path / "a model with a rather long file name.onnx")
    bench = cli("bench", str(model), "--target", "wearos-watch", "--set", "benchmark.runs=20")
    whole(bench)
    latency = tsv_rows(bench.stdout.split("\n\n")[0])
    assert latency[0][:4] == ["target", "model", "label", "p50 ms"]
    assert latency[1][:2] == ["wearos-watch", model.name] and re.fullmatch(r"\d+\.\d{3}", latency[1][3])
    row = document(cli("bench", str(model), "--target", "wearos-watch", "--set", "benchmark.runs=20", "--json"),
                   "bench")["rows"][0]
    assert row["artifact"] == model.name and row["latency_ms"]["p50"] > 0

    schema = cli("schema")
    assert json.loads(schema.stdout)["title"] == "PipelineConfig" and not schema.stderr


def test_the_positional_config_still_works_and_says_it_is_deprecated(tmp_path, capsys):
    config = tmp_path / "my.toml"
    config.write_text("[run]\nname = 'mine'\n")
    assert main(["status", str(config), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["run"] == "mine"
    assert err == f"`status CONFIG` is deprecated: use `status --config {config}`\n"
    assert main(["status", "-c", str(config), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["run"] == "mine" and err == ""
    assert main(["status", str(config), "--config", str(config)]) == 2
    assert "give only --config FILE" in capsys.readouterr().err
    assert main(["run", str(config), "--until", "distil"]) == 2  # read, then refused for its own reason
    deprecated, error = capsys.readouterr().err.splitlines()
    assert deprecated == f"`run CONFIG` is deprecated: use `run --config {config}`"
    assert error.startswith("error: --until 'distil': no such stage")


def test_bench_json_path_still_writes_the_file_and_says_it_is_deprecated(tmp_path, capsys):
    model, out = write_onnx(tmp_path / "tiny.onnx"), tmp_path / "bench.json"
    assert main(["bench", str(model), "--target", "wearos-watch", "--set", "benchmark.runs=20",
                 "--json", str(out)]) == 0
    printed, err = capsys.readouterr()
    assert json.loads(out.read_text())["schema"] == "manifold-edge/bench/1" and "wearos-watch" in printed
    assert f"--json PATH is deprecated: use --json > {out}" in err
    assert main(["bench", "--json", str(model), "--target", "wearos-watch", "--set", "benchmark.runs=20"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["artifact"] == "tiny.onnx"  # a model, not a PATH


def test_a_stage_that_fails_prints_one_line_on_the_console_and_keeps_the_log(tmp_path):
    images = folder_with_a_broken_image(tmp_path)
    args = cli_args(tmp_path, "run", "data.dataset='imagefolder'", f"data.path='{images}'",
                    "data.img_size=8")
    done = cli(*args, "--until", "data")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[-1].startswith("error: ") and "cannot read image" in done.stderr
    assert "manifold-edge run" in (tmp_path / "runs" / "default" / "run.log").read_text()


def cached_rerun_and_reports(trained: Path, folder: Path) -> dict:
    """conftest.AFTER_TRAINED: on a copy of the shared trained run, `run --json` (every stage cached), then `report`
    in text and in JSON; each call's exit code, stdout and stderr."""
    shutil.copytree(trained, folder)
    run_dir = folder / "runs" / "default"
    calls = {"rerun": cli(*cli_args(folder, "run", *TRAINED, "quantize.calibration_images=100000", "run.threads=1"),
                          "--json"),
             "report": cli("report", str(run_dir)), "report_json": cli("report", str(run_dir), "--json")}
    return {"run_dir": str(run_dir), **{name: outcome(done) for name, done in calls.items()}}


def test_a_default_run_prints_only_our_lines_and_logs_the_libraries(trained_run, trained_run_console,
                                                                    cached_rerun_and_reports):
    """The shared trained run (every stage, every format on, stdout and stderr pipes): each console line is one our
    code writes, none a library's; the libraries' lines are in runs/default/run.log. Then, on a copy, `run --json`
    (all cached) and `report`, in text and JSON."""
    stdout, stderr = trained_run_console
    for stream, shape in ((stderr, STAGE_LINE), (stdout, SHIP_LINE)):
        strays = [line for line in stream.splitlines() if line and (LIBRARY.search(line) or not shape.match(line))]
        assert not strays, strays
    assert stdout.startswith("deploy: ") and re.search(r"^\[7/7\] benchmark: done", stderr, re.M), stderr[-2000:]
    log = (trained_run / "runs" / "default" / "run.log").read_text()
    for line in ("cpuinfo_utils", "Statistics collection", "INFO: Created TensorFlow Lite XNNPACK delegate"):
        assert line in log, log[-3000:]

    calls = {name: subprocess.CompletedProcess([name], *done) for name, done in cached_rerun_and_reports.items()
             if name != "run_dir"}
    run_dir, rerun = Path(cached_rerun_and_reports["run_dir"]), calls["rerun"]
    ran = document(rerun, "run")
    assert ran["run_dir"] == str(run_dir) and Path(ran["report"]["html"]).is_file()
    assert ": running" not in rerun.stderr and "benchmark: reused, cached" in rerun.stderr, rerun.stderr
    for choice in (c for target in ran["ship"].values() for c in target["by_runtime"].values() if c["artifact"]):
        assert Path(choice["folder"]).is_dir() and choice["top1"] is not None
    report = calls["report"]
    assert report.returncode == 0 and report.stdout.splitlines()[0].startswith("deploy: ")
    assert all(SHIP_LINE.match(line) for line in report.stdout.splitlines()) and "rebuilt" in report.stderr
    assert document(calls["report_json"], "report")["ship"] == ran["ship"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_narrow_terminal_wraps_text_and_never_cuts_a_number_or_an_id(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    path = "/a/rather/long/path/to/runs/.cache/export-0123456789abcdef"
    table = Table("t", [Column("key", wrap=False), Column("why"), Column("p50 ms", numeric=True), Column("path")],
                  [["0123456789abcdef", "a long reason " * 5, "1234.567", path]])
    screen = Terminal()
    show([table], screen)
    text = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue())
    assert "…" not in text and "0123456789abcdef" in text and "1234.567" in text
    assert "".join(re.findall(r"│ *([^\s│]*) *│\n", text)).endswith(path)  # the last column, folded, whole
    assert tsv([table, table]).startswith("# t\nkey\twhy\tp50 ms\tpath\n0123456789abcdef\t")


@pytest.mark.parametrize("verb", [["schema"], ["targets", "--json"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(verb):
    """`manifold-edge ... | head`: the pipe's reader closes before the output is written; the command ends as a
    shell's SIGPIPE does (141) with nothing on stderr, not with an "internal error" traceback."""
    child = subprocess.Popen([sys.executable, "-m", "pipeline", *verb], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.close()  # before the child has imported anything, so its first write finds no reader
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141 and stderr == "", stderr
