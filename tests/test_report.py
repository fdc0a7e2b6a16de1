"""report.html as a person sees it (headless Chromium), `report` rebuilding from artifacts, `compare`."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import cli_args, read_report
from pipeline.cli import main
from pipeline.plots import pareto_front
from pipeline.report.html import render_html


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test-tools` installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


def render(page: Path, tmp_path: Path, height: int = 2400) -> tuple[str, str, Path]:
    """The DOM after load, Chromium's console log, and a screenshot of the first `height` pixels at 1280 wide."""
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    return dom.stdout, dom.stderr, shot


def health(dom: str) -> dict:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and re.search(r"error|uncaught", line, re.I)]


def test_report_html_renders_in_chromium(trained_run, tmp_path):
    run_dir = trained_run / "runs" / "default"
    page = run_dir / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and 'src="plots/' not in text  # self-contained
    dom, log, shot = render(page, tmp_path)
    assert health(dom) == {"ready": "1", "errors": "0", "broken-images": "0"}
    assert not console_errors(log)
    for heading in ("Accuracy on the held-out", "Student artifacts", "Latency per target", "Accuracy vs latency",
                    "Why is INT8", "Stages"):
        assert heading in dom
    report = read_report(trained_run)
    timed_targets = {r["target"] for r in report["latency"]["rows"] if "latency_ms" in r}
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', dom)
    assert len(images) >= 1 + 2 * len(timed_targets)  # curves + a Pareto plot and layer bars per timed target
    tables = re.findall(r"<table>.*?</table>", dom, re.S)
    assert len(tables) >= 4 and all(t.count("<tr>") >= 2 for t in tables)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280) and pixels.std() > 20  # text, tables and plots, not a blank page


def test_the_health_check_sees_a_broken_page(tmp_path):
    """The checks above can fail: a script error and a missing image are reported by the page itself."""
    page = tmp_path / "broken.html"
    page.write_text(render_html("broken", "# t\n\n![missing](plots/none.png)\n", tmp_path)
                    .replace("</main>", "</main><script>undefinedFunction();</script>"))
    dom, log, _ = render(page, tmp_path)
    state = health(dom)
    assert state["ready"] == "1" and state["errors"] == "1" and state["broken-images"] == "1"
    assert console_errors(log)


def test_report_command_rebuilds_from_artifacts(trained_run, tmp_path, capsys):
    run_dir = tmp_path / "default"
    shutil.copytree(trained_run / "runs" / "default", run_dir)  # the artifacts stay where they are, read only
    before = (run_dir / "report.md").read_text()
    state = (run_dir / "state.json").read_text()
    for path in [run_dir / "report.html", run_dir / "report.md", *run_dir.glob("plots/*.png")]:
        path.unlink()
    assert main(["report", str(run_dir)]) == 0
    after = (run_dir / "report.md").read_text()
    strip = lambda t: re.sub(r"wall time \d+ s|commit `\w+`", "", t)  # noqa: E731
    assert strip(after) == strip(before)
    assert (run_dir / "report.html").stat().st_size > 10_000 and list(run_dir.glob("plots/pareto_*.png"))
    assert (run_dir / "state.json").read_text() == state
    assert "rebuilt" in json.loads((run_dir / "report.json").read_text())["run"]


def test_report_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no lock left behind


@pytest.mark.slow
def test_compare_puts_two_runs_side_by_side(trained_run, tmp_path, capsys):
    from conftest import TRAINED

    runs = tmp_path / "runs"
    shutil.copytree(trained_run / "runs", runs)
    args = cli_args(tmp_path, "run", *TRAINED, "quantize.calibration_images=100000", "run.name='more-runs'",
                    "benchmark.runs=30", "benchmark.targets=['wearos-watch']")  # one target: the rerun is short
    assert main(args) == 0
    capsys.readouterr()
    assert main(["compare", str(runs / "default"), str(runs / "more-runs"), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "`benchmark.runs`: 20 -> 30" in printed and "onnx_int8_static" in printed and "wearos-watch" in printed
    assert "| wearos-watch | litert" in printed and "sha256" in printed  # the shipped files, hashed
    assert "<table>" in (tmp_path / "cmp" / "compare.html").read_text()
    assert json.loads((runs / "more-runs" / "report.json").read_text())["stages"]["distill"]["cached"]


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 80.0), (2.0, 85.0), (1.5, 79.0), (3.0, 84.0), (0.5, 70.0)]
    assert pareto_front(points) == [(0.5, 70.0), (1.0, 80.0), (2.0, 85.0)]


def test_report_from_anywhere_rebuilds_a_damaged_report_and_refuses_a_damaged_state(trained_run, tmp_path,
                                                                                      monkeypatch, capsys):
    runs = tmp_path / "elsewhere" / "runs"
    shutil.copytree(trained_run / "runs" / "default", runs / "default")
    (runs / ".cache").symlink_to(trained_run / "runs" / ".cache")
    report = json.loads((runs / "default" / "report.json").read_text())
    report["config"]["run"]["output_dir"] = "runs"  # as a run started in its project folder records it
    (runs / "default" / "report.json").write_text(json.dumps(report))
    monkeypatch.chdir(tmp_path)  # where ./runs does not exist
    assert main(["report", str(runs / "default")]) == 0
    capsys.readouterr()
    state = runs / "default" / "state.json"
    for shape in ("[]", '{"data": 5}'):  # valid JSON of the wrong shape
        state.write_text(shape)
        assert main(["report", str(runs / "default")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "state.json is damaged" in err[0]
    state.write_text(json.dumps(json.loads((trained_run / "runs" / "default" / "state.json").read_text())))
    before = json.loads((runs / "default" / "report.json").read_text())
    (runs / "default" / "report.json").write_text('{"config": {"run": ')  # truncated: rebuilt, with a warning
    assert main(["report", str(runs / "default")]) == 0
    err = capsys.readouterr().err
    assert "report.json is damaged (JSONDecodeError): rebuilt from the artifacts and config.json" in err
    after = json.loads((runs / "default" / "report.json").read_text())
    assert after["evaluation"] == before["evaluation"] and after["ship"] == before["ship"]
    assert after["run"]["wall_s"] is None and "wall time unknown" in (runs / "default" / "report.md").read_text()


def test_a_damaged_state_json_is_ignored_with_a_warning(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "state.json").write_text('{"data": {"ke')
    assert main(["status", "--set", f"run.output_dir='{tmp_path / 'runs'}'"]) == 0
    captured = capsys.readouterr()
    assert "state.json is unreadable (JSONDecodeError): ignored" in captured.err
