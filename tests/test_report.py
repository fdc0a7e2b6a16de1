"""report.html as a person sees it (headless Chromium), `report` rebuilding from artifacts, `compare`."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli_output import cli, outcome

from conftest import cli_args, read_report
from pipeline.cli import main
from pipeline.plots import pareto_front
from pipeline.report.html import render_html

ROOT = Path(__file__).resolve().parents[1]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test-tools` installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


def _flags(tmp_path: Path) -> list[str]:
    return [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]


def render(page: Path, tmp_path: Path, height: int = 2400, width: int = 1280) -> tuple[str, str, Path]:
    """The DOM after load, Chromium's console log, and a screenshot of the first `height` pixels at `width`."""
    dom = subprocess.run([*_flags(tmp_path), "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    shot = tmp_path / f"shot-{width}.png"
    subprocess.run([*_flags(tmp_path), f"--window-size={width},{height}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    return dom.stdout, dom.stderr, shot


# Headless Chromium lays out --dump-dom in a window at least 500 px wide, so a phone's width is measured on the page
# laid out in a frame that wide (srcdoc: same origin, so the script can read it; media queries see the frame's width).
GEOMETRY = """<iframe id="page" style="border:0" width="WIDTH" height="844" srcdoc="PAGE"></iframe><script>
document.getElementById('page').addEventListener('load', function () {
  var doc = this.contentDocument, width = doc.documentElement.clientWidth, seen = {}, outside = [], cells = [];
  var node = Array.from(doc.querySelectorAll('h2')).find(function (h) { return h.textContent === 'Ship'; });
  for (node = node && node.nextElementSibling; node && node.tagName !== 'H2'; node = node.nextElementSibling)
    cells.push.apply(cells, node.querySelectorAll('td'));
  cells.forEach(function (td) {
    var box = td.getBoundingClientRect(), text = doc.createRange();
    text.selectNodeContents(td);
    var ink = text.getBoundingClientRect();
    if (!box.width) return;  /* an empty cell, left out of its card */
    var label = td.dataset.label || (td.cellIndex ? 'unlabelled' : 'title');
    if (Math.min(box.left, ink.left) < -0.5 || Math.max(box.right, ink.right) > width + 0.5) outside.push(label);
    else seen[label] = (seen[label] || 0) + 1;
  });
  var b = document.body.dataset;
  b.width = width; b.pageWidth = doc.documentElement.scrollWidth; b.outside = outside.join('|');
  b.seen = JSON.stringify(seen); b.done = '1';
});
</script>"""


def phone_geometry(page: Path, tmp_path: Path, width: int = 390) -> dict:
    """report.html laid out `width` px wide (a phone's 390 by default): the frame's width, the page's scroll
    width, and for the cells of the Ship section's tables how many of each column (data-label; `title`: a row's first
    cell) lie inside the width (`seen`) and which lie outside it, text included."""
    probe = tmp_path / "phone.html"
    probe.write_text(GEOMETRY.replace("WIDTH", str(width)).replace("PAGE", html.escape(page.read_text(), quote=True)))
    dom = subprocess.run([*_flags(tmp_path), "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    state = health(dom)
    assert state.get("done") == "1", dom[:2000]
    return {"width": int(state["width"]), "page_width": int(state["page-width"]),
            "outside": [o for o in html.unescape(state["outside"]).split("|") if o],
            "seen": json.loads(html.unescape(state["seen"]))}


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
    phone = phone_geometry(page, tmp_path)  # the Ship section on a phone: every card inside the screen
    shipped = sum(bool(c.get("artifact")) for a in report["ship"].values() for c in a["by_runtime"].values())
    assert phone["outside"] == [] and phone["page_width"] <= phone["width"] <= 390
    assert phone["seen"]["top-1 % (Δ vs fp32, 95% interval)"] == phone["seen"]["latency: p50 [interval], p90 ms"] \
        == shipped


def test_the_health_check_sees_a_broken_page(tmp_path):
    """The checks above can fail: a script error and a missing image are reported by the page itself."""
    page = tmp_path / "broken.html"
    page.write_text(render_html("broken", "# t\n\n![missing](plots/none.png)\n", tmp_path)
                    .replace("</main>", "</main><script>undefinedFunction();</script>"))
    dom, log, _ = render(page, tmp_path)
    state = health(dom)
    assert state["ready"] == "1" and state["errors"] == "1" and state["broken-images"] == "1"
    assert console_errors(log)


def ship_report() -> dict:
    """The Ship section's inputs as a run writes them: two targets whose apps may link three SDKs, the names and
    precision labels of a real run (the longest a row holds), each file timed with its median's 95% interval."""
    from pipeline.core.numerics import floating, static_int8
    from pipeline.ship import choose_records

    files = {"onnx_int8_static": ("onnxruntime", "int8 static QDQ, attention float", 88.46, 0.994, 232_735,
                                  "model_int8_static.onnx", 0.199),
             "executorch_int8": ("executorch", "int8 static (XNNPACK quantizer, per-channel)", 88.44, 0.992, 284_072,
                                 "model_int8.pte", 0.127),
             "litert_int8": ("litert", "int8 static, FC/conv (float32 in/out)", 88.53, 0.990, 341_000,
                             "model_int8.tflite", 0.079)}
    evaluation = {"images": 10_000, "artifacts": [
        {"artifact": "torch_fp32", "runtime": "torch", "precision": "fp32", "numerics": floating("fp32"),
         "top1": 88.51, "agreement": 1.0, "bytes": 680_000, "evaluation": "measured", "file": "model.pt"},
        *({"artifact": a, "runtime": r, "precision": p, "numerics": static_int8(), "top1": t, "agreement": g,
           "bytes": b, "evaluation": "measured", "file": f} for a, (r, p, t, g, b, f, _) in files.items())]}
    profile = {"runtime": "litert", "runtimes": ["onnxruntime", "executorch"], "memory_budget_mb": 40}
    ship = {}
    for target, scale in (("android-phone", 1.4), ("wearos-watch", 1.0)):
        rows = [{"target": target, "artifact": a, "runtime": r, "label": "proxy",
                 "latency_ms": {"p50": ms * scale, "p90": 1.6 * ms * scale, "confidence": 0.95,
                                "p50_interval": [0.99 * ms * scale, 1.03 * ms * scale]},
                 "budget": {"latency_ok": True, "memory_ok": True}} for a, (r, *_, ms) in files.items()]
        ship[target] = choose_records(target, profile, rows, evaluation, max_drop=1.0)
    return {"ship": ship, "config": {"ship": {"prefer": "accuracy"}}}


def test_the_ship_tables_fit_a_phone_screen(tmp_path, monkeypatch):
    """At 390 px wide (and a tablet's 820) the Ship section's tables are cards: every cell of them, accuracy and
    latency included, lies inside the screen, and the page does not scroll sideways; the same page without the
    cards puts the latency off the screen (the control); at 1280 px they stay tables."""
    import pipeline.report.html
    from pipeline.report.markdown import ship_lines

    report = ship_report()
    markdown = "\n".join(["# ship", "", *ship_lines(report)])
    page = tmp_path / "report.html"
    page.write_text(render_html("ship", markdown, tmp_path))
    choices = [c for answer in report["ship"].values() for c in answer["by_runtime"].values()]
    assert len(choices) == 6 and all(c["file"] and c["latency_ms"]["confidence"] == 0.95 for c in choices)
    for width in (390, 820):
        phone = phone_geometry(page, tmp_path, width)
        assert phone["width"] <= width and phone["page_width"] <= phone["width"] and phone["outside"] == []
        seen = phone["seen"]
        assert seen["top-1 % (Δ vs fp32, 95% interval)"] == seen["latency: p50 [interval], p90 ms"] == len(choices)
        assert seen["ship: artifact, file"] == len(choices) and seen["title"] == 2 + len(choices)  # matrix + detail
    monkeypatch.setattr(pipeline.report.html, "CARD_SECTIONS", ())
    (tmp_path / "plain.html").write_text(render_html("ship", markdown, tmp_path))
    assert "latency: p50 [interval], p90 ms" in phone_geometry(tmp_path / "plain.html", tmp_path)["outside"]
    text = page.read_text()
    for c in choices:  # both names, and the median with its interval
        lo, hi = c["latency_ms"]["p50_interval"]
        assert f"<code>{c['artifact']}</code>: <code>{c['file']}</code>" in text
        assert f"p50 {c['latency_ms']['p50']:.3f} ms [{lo:.3f}-{hi:.3f}, 95%]" in text
    dom, _, shot = render(page, tmp_path, height=800)
    assert health(dom)["ready"] == "1" and '<div class="cards">' in dom
    assert Image.open(shot).size == (1280, 800)


def test_the_kept_outputs_digest_follows_the_code_that_writes_them(tmp_path, monkeypatch):
    """An edit in pipeline/, backends/ or targets/ (where the deploy folders' file lists and readers live:
    targets.devices.model_files, the backends' agents) changes the digest the deploy folders and plots are kept
    by; the report's timings and the stages' `cached` flags do not."""
    from pipeline.report import build

    for package in ("pipeline", "backends", "targets"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "code.py").write_text("X = 1\n")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    report = {"run": {"name": "r", "wall_s": 1.0}, "stages": {"distill": {"cached": False, "key": "k"}}}
    digest = build.outputs_digest(report)
    rerun = {"run": {"name": "r", "wall_s": 9.0}, "stages": {"distill": {"cached": True, "key": "k"}}}
    assert build.outputs_digest(rerun) == digest
    for package in ("pipeline", "backends", "targets"):
        (tmp_path / package / "code.py").write_text("X = 2\n")
        assert build.outputs_digest(report) != digest, package
        digest = build.outputs_digest(report)


def test_rendering_report_md_draws_nothing(trained_run):
    """report.md of a full run rendered in a fresh process imports no matplotlib (a cached rerun keeps its plots
    and draws none: the import took about 0.4 s of it)."""
    report = trained_run / "runs" / "default" / "report.json"
    code = ("import json, sys; from pipeline.report.markdown import render_markdown; "
            f"text = render_markdown('t', json.load(open({str(report)!r}))); "
            "print(len(text) > 1000, 'matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "False"], done.stdout + done.stderr


def _cli(*args: str, cwd: Path = ROOT) -> list:
    """`manifold-edge ARGS` in a process of its own (test_cli_output.cli), as JSON holds it."""
    return outcome(cli(*args, cwd=cwd))


def rebuild_without_report_files(trained: Path, folder: Path) -> dict:
    """conftest.AFTER_TRAINED: a copy of the trained run's folder (its artifacts stay where they are, read only)
    without report.html, report.md and the plots, rebuilt by `report`."""
    run_dir = folder / "default"
    shutil.copytree(trained / "runs" / "default", run_dir)
    before, state = (run_dir / "report.md").read_text(), (run_dir / "state.json").read_text()
    for path in [run_dir / "report.html", run_dir / "report.md", *run_dir.glob("plots/*.png")]:
        path.unlink()
    return {"run_dir": str(run_dir), "report_md": before, "state": state, "call": _cli("report", str(run_dir))}


def test_report_command_rebuilds_from_artifacts(rebuilt_without_report_files):
    result = rebuilt_without_report_files
    run_dir = Path(result["run_dir"])
    assert result["call"][0] == 0, result["call"][2]
    strip = lambda t: re.sub(r"wall time \d+ s|commit `\w+`", "", t)  # noqa: E731
    assert strip((run_dir / "report.md").read_text()) == strip(result["report_md"])
    assert (run_dir / "report.html").stat().st_size > 10_000 and list(run_dir.glob("plots/pareto_*.png"))
    assert (run_dir / "state.json").read_text() == result["state"]
    assert "rebuilt" in json.loads((run_dir / "report.json").read_text())["run"]


def test_report_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no lock left behind


def another_run_and_compare(trained: Path, folder: Path) -> dict:
    """conftest.AFTER_TRAINED: a copy of the trained run's output folder, a second run in it (another name, benchmark
    settings changed, one target: a short rerun), then `compare` of the two."""
    from conftest import TRAINED

    runs = folder / "runs"
    shutil.copytree(trained / "runs", runs)
    args = cli_args(folder, "run", *TRAINED, "quantize.calibration_images=100000", "run.name='more-runs'",
                    "benchmark.runs=30", "benchmark.targets=['wearos-watch']")
    return {"runs": str(runs), "out": str(folder / "cmp"), "run": _cli(*args),
            "compare": _cli("compare", str(runs / "default"), str(runs / "more-runs"), "--out", str(folder / "cmp"))}


def test_compare_puts_two_runs_side_by_side(another_run_and_compared):
    result = another_run_and_compared
    assert result["run"][0] == 0, result["run"][2][-3000:]
    code, printed, err = result["compare"]
    assert code == 0, err
    assert "`benchmark.runs`: 20 -> 30" in printed and "onnx_int8_static" in printed and "wearos-watch" in printed
    assert "| wearos-watch | litert" in printed and "sha256" in printed  # the shipped files, hashed
    assert "<table>" in (Path(result["out"]) / "compare.html").read_text()
    assert json.loads((Path(result["runs"]) / "more-runs" / "report.json").read_text())["stages"]["distill"]["cached"]


def test_pareto_front_keeps_only_undominated_points():
    points = [(1.0, 80.0), (2.0, 85.0), (1.5, 79.0), (3.0, 84.0), (0.5, 70.0)]
    assert pareto_front(points) == [(0.5, 70.0), (1.0, 80.0), (2.0, 85.0)]


def test_pareto_names_every_point_without_overlaps(tmp_path):
    """The watch's eight files, four of them within 0.04 ms and 0.07 points of each other (a real run's): each point
    named once, no two names overlapping, no name outside the axes; the shipped file named in bold."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from pipeline.plots import pareto, place_labels

    points = [(0.126, 88.53, "litert_int8"), (0.139, 88.47, "litert_int8_dynamic"), (0.159, 88.51, "litert"),
              (0.184, 88.44, "executorch_int8"), (0.301, 88.46, "onnx_int8_static"), (0.306, 88.51, "executorch"),
              (0.320, 88.51, "onnx"), (0.337, 88.44, "onnx_int8_dynamic")]
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.set_ylim(87.4, 88.7)
    fig.tight_layout()
    place_labels(ax, points, "litert_int8", marked=("litert_int8", "executorch_int8", "onnx_int8_static"))
    fig.canvas.draw()
    renderer, frame = fig.canvas.get_renderer(), ax.get_window_extent()
    boxes = {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts}
    assert sorted(boxes) == sorted(p[2] for p in points)
    assert not [(a, b) for a in boxes for b in boxes if a < b and boxes[a].overlaps(boxes[b])]
    assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes.values())
    assert [t.get_fontweight() for t in ax.texts if t.get_text() == "litert_int8"] == ["bold"]
    plt.close(fig)
    rows = [{"artifact": name, "label": "proxy", "latency_ms": {"p90": x}} for x, _, name in points]
    path = pareto("wearos-watch", rows, {name: y for _, y, name in points}, 30, 87.51, tmp_path / "p.png",
                  "litert_int8", ("litert_int8", "executorch_int8", "onnx_int8_static"))
    assert Image.open(path).size[0] > 600


def test_profile_panels_one_per_file_and_a_line_where_the_runtime_gives_none(tmp_path):
    """A per-layer panel per profiled file (an op type in int8 and in float: two bars); where the timed files of a
    runtime have no profile (LiteRT's Python interpreter has no profiler), one line in the panels' place says so."""
    from pipeline.plots import layer_bars
    from pipeline.report.markdown import latency_lines

    ops = [{"op_type": "MatMul", "precision": "int8", "ms": 0.2, "share": 0.5},
           {"op_type": "MatMul", "precision": "float", "ms": 0.1, "share": 0.25},
           {"op_type": "QuantizeLinear", "precision": "convert", "ms": 0.1, "share": 0.25}]
    budget = {"latency_ms": 30, "memory_mb": 40, "latency_ok": True, "memory_ok": True}
    timed = {"label": "proxy", "latency_ms": {"p50": 0.5, "p90": 0.6, "p99": 0.7, "p50_interval": [0.49, 0.51]},
             "throughput": {}, "model_rss_mb": 2, "budget": budget, "target": "wearos-watch", "precision": "int8"}
    rows = [{**timed, "artifact": "onnx_int8_static", "runtime": "onnxruntime",
             "profile": {"by_op_type": ops, "layers_ms": 0.4}},
            {**timed, "artifact": "litert", "runtime": "litert"},
            {**timed, "artifact": "litert_int8", "runtime": "litert"},
            {"target": "wearos-watch", "artifact": "coreml", "runtime": "coreml", "precision": "fp16",
             "label": "needs-device"}]
    path = layer_bars("wearos-watch", rows[0], tmp_path / "layers.png")
    assert path is not None and layer_bars("wearos-watch", rows[1], tmp_path / "none.png") is None
    plots = {"layers:wearos-watch:onnx_int8_static": "plots/layers_wearos-watch_onnx_int8_static.png"}
    md = "\n".join(latency_lines({"rows": rows, "targets": {"wearos-watch": {}}}, None, plots))
    assert "![wearos-watch / onnx_int8_static: time per op type" in md
    [line] = [line for line in md.splitlines() if line.startswith("No per-layer profile")]
    assert line.startswith("No per-layer profile for `litert`, `litert_int8`: LiteRT's Python interpreter")
    assert "benchmark_model --enable_op_profiling=true" in line and "coreml" not in line


def report_from_elsewhere_then_damaged(trained: Path, folder: Path) -> dict:
    """conftest.AFTER_TRAINED: `report` on a copy of the trained run's folder from a folder without ./runs (its
    report.json recording output_dir as "runs", as a run started in its project folder does), then with state.json
    of the wrong shape, then with report.json truncated."""
    runs = folder / "elsewhere" / "runs"
    shutil.copytree(trained / "runs" / "default", runs / "default")
    (runs / ".cache").symlink_to(trained / "runs" / ".cache")
    report = json.loads((runs / "default" / "report.json").read_text())
    report["config"]["run"]["output_dir"] = "runs"
    (runs / "default" / "report.json").write_text(json.dumps(report))
    calls = {"elsewhere": _cli("report", str(runs / "default"), cwd=folder)}
    state = runs / "default" / "state.json"
    for shape in ("[]", '{"data": 5}'):  # valid JSON of the wrong shape
        state.write_text(shape)
        calls[shape] = _cli("report", str(runs / "default"), cwd=folder)
    state.write_text(json.dumps(json.loads((trained / "runs" / "default" / "state.json").read_text())))
    before = json.loads((runs / "default" / "report.json").read_text())
    (runs / "default" / "report.json").write_text('{"config": {"run": ')  # truncated: rebuilt, with a warning
    calls["truncated"] = _cli("report", str(runs / "default"), cwd=folder)
    return {"run_dir": str(runs / "default"), "before": before, "calls": calls}


def test_report_from_anywhere_rebuilds_a_damaged_report_and_refuses_a_damaged_state(reported_from_elsewhere):
    calls, run_dir = reported_from_elsewhere["calls"], Path(reported_from_elsewhere["run_dir"])
    assert calls["elsewhere"][0] == 0, calls["elsewhere"][2]
    for shape in ("[]", '{"data": 5}'):
        code, _, err = calls[shape]
        assert code == 2 and len(err.strip().splitlines()) == 1 and "state.json is damaged" in err, err
    code, _, err = calls["truncated"]
    assert code == 0 and "report.json is damaged (JSONDecodeError): rebuilt from the artifacts and config.json" in err
    before, after = reported_from_elsewhere["before"], json.loads((run_dir / "report.json").read_text())
    assert after["evaluation"] == before["evaluation"] and after["ship"] == before["ship"]
    assert after["run"]["wall_s"] is None and "wall time unknown" in (run_dir / "report.md").read_text()


def test_a_damaged_state_json_is_ignored_with_a_warning(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "state.json").write_text('{"data": {"ke')
    assert main(["status", "--set", f"run.output_dir='{tmp_path / 'runs'}'"]) == 0
    captured = capsys.readouterr()
    assert "state.json is unreadable (JSONDecodeError): ignored" in captured.err
