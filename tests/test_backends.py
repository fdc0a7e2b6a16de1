"""The backends registry: one package per format, found by name; and a format added with one folder and one
registry line (tests/toy_backend/) flowing through export, evaluate, benchmark, ship and deploy with no other
edit."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import backends
from conftest import TRAINED, cli_args
from pipeline.config import PipelineConfig, load_config
from pipeline.core.errors import UserError
from targets.agent.adapter import adapter

ROOT = Path(__file__).resolve().parents[1]


def test_each_suffix_names_one_backend_and_each_runtime_has_a_runner_and_an_agent_adapter():
    suffixes = [s for b in backends.backends() for s in b.suffixes]
    assert len(suffixes) == len(set(suffixes))
    for backend in backends.backends():
        for suffix in backend.suffixes:
            assert backends.for_file(f"model{suffix}") is backend
        assert backend.runner_factory and backend.export_module, backend.name
        assert adapter(backend.runtime).name == backend.runtime, backend.name
    assert backends.runtimes() == ["onnxruntime", "openvino", "executorch", "litert", "coreml"]


def test_a_file_no_backend_takes_is_one_line_naming_the_known_suffixes():
    with pytest.raises(UserError, match=r"model\.bin: no runtime for '\.bin' files; known: \.onnx, \.ort, \.xml"):
        backends.for_file("model.bin")


def test_the_export_and_quantize_sections_are_each_backend_s_fields_and_nothing_else():
    export, quantize = (PipelineConfig.model_fields[name].annotation.model_fields for name in ("export", "quantize"))
    for backend in backends.backends():
        for section, fields in ((backend.export_fields, export), (backend.quantize_fields, quantize)):
            assert set(section.model_fields) <= set(fields), backend.name
    declared = {f for b in backends.backends() for s in (b.export_fields, b.quantize_fields) for f in s.model_fields}
    common = {"parity_images", "parity_max_abs_diff", "parity_max_abs_diff_fp16", "parity_min_agreement",
              "calibration_images", "max_drop", "validation_images", "max_fallback_layers", "max_fallback_seconds",
              "on_over_budget", "processes"}
    assert set(export) | set(quantize) == declared | common


def test_a_backend_s_cross_section_rule_is_checked_when_the_config_loads(tmp_path):
    with pytest.raises(UserError, match="quantize.openvino needs export.openvino = true"):
        load_config(None, ["export.openvino=false"])
    with pytest.raises(UserError, match="quantize.coreml.enabled needs export.coreml.enabled = true"):
        load_config(None, ["export.coreml.enabled=false"])


@pytest.mark.parametrize("offset, flipped, images", [(0.0, None, 64), (2e-4, None, 512), (0.0, 10, 512)])
def test_parity_stops_after_the_first_images_only_when_they_are_well_inside_the_bound(offset, flipped, images):
    """The early-stop rule (backends.base.EARLY_RULE): 64 images, then all 512 unless max |diff| there is under a
    tenth of the bound (1e-3) and every argmax agrees (a tie broken the other way among the first 64 is seen)."""
    import numpy as np

    from backends.base import EARLY_RULE, Backend, parity_check

    rng = np.random.default_rng(0)
    pixels, reference = rng.standard_normal((512, 3)).astype(np.float32), rng.standard_normal((512, 10))
    reference[10, :2] = 5, 5 + 5e-5  # a near tie: a 6e-5 change (under a tenth of the bound) flips its argmax
    seen = []

    def runner(x):
        seen.append(len(x))
        index = np.flatnonzero((pixels[:, None] == x[None]).all(2).any(1))
        out = reference[index] + offset
        out[index == flipped, 0] += 6e-5
        return out

    runner.evaluation = "measured"

    class Exact(Backend):
        name, runtime = "exact", "exact"

        def runner(self, path, threads=0):
            return runner

    check = parity_check("exact", Exact(), Path("model.x"), "net", pixels, reference, 1e-3, 0.99)
    assert check["images"] == images and sum(seen) == images and check["rule"] == EARLY_RULE
    assert check["argmax_agreement"] == (1.0 if flipped is None else 511 / 512)


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        backends.register("onnx", "backends.onnx:BACKEND")


TOY_TARGET = """
[targets.toy-device]
description = "this host, as a device whose app links the toy runtime"
device = "laptop"
runtime = "onnxcopy"
connection = "local"
latency_budget_ms = 1000
memory_budget_mb = 1000
"""
# Only ONNX (which every run has) and the toy: no INT8, no other format.
ONLY_THE_TOY = ("export.openvino=false", "quantize.openvino=false", "export.ort_mobile.enabled=false",
                "export.executorch.enabled=false", "export.litert.enabled=false", "export.coreml.enabled=false",
                "quantize.coreml.enabled=false", "quantize.onnx_static=false", "quantize.onnx_dynamic=false",
                "quantize.executorch.enabled=false", "quantize.litert.full_integer=false",
                "quantize.litert.dynamic_range=false", "evaluate.arm64='off'", "benchmark.targets=['toy-device']",
                "benchmark.runs=200")


def rerun_with_the_toy_format(trained: Path, folder: Path) -> dict:
    """conftest.AFTER_TRAINED: a copy of the shared trained run rerun from export with the toy format registered (in
    its own process, before the config schema is composed), on a target whose app links only the toy's runtime."""
    shutil.copytree(trained, folder)
    (folder / "pipeline.toml").write_text(TOY_TARGET)
    args = cli_args(folder, "run", *TRAINED, *ONLY_THE_TOY)
    code = ("import sys, backends; backends.register('onnx_copy', 'tests.toy_backend:BACKEND'); "
            f"from pipeline.cli import main; sys.exit(main({args!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    return {"run_dir": str(folder / "runs" / "default"), "returncode": done.returncode,
            "output": done.stdout[-3000:] + done.stderr[-3000:]}


@pytest.fixture
def toy_run(toy_format_rerun) -> Path:
    assert toy_format_rerun["returncode"] == 0, toy_format_rerun["output"]
    return Path(toy_format_rerun["run_dir"])


@pytest.mark.slow
def test_a_format_added_with_one_folder_and_one_registry_line_is_exported_evaluated_timed_and_shipped(toy_run):
    report = json.loads((toy_run / "report.json").read_text())
    exported = report["stages"]["export"]["summary"]["artifacts"]
    assert set(exported) == {"onnx", "onnx_copy"}
    assert exported["onnx_copy"]["parity"]["max_abs_diff"] == exported["onnx"]["parity"]["max_abs_diff"]  # one file
    rows = {r["artifact"]: r for r in report["evaluation"]["artifacts"]}
    assert rows["onnx_copy"]["evaluation"] == "measured" and rows["onnx_copy"]["top1"] == rows["onnx"]["top1"]
    timed = [r for r in report["latency"]["rows"] if r["target"] == "toy-device"]
    assert [r["artifact"] for r in timed] == ["onnx_copy"] and timed[0]["latency_ms"]["p50"] > 0
    ship = report["ship"]["toy-device"]
    assert ship["overall"] == "onnxcopy" and ship["by_runtime"]["onnxcopy"]["artifact"] == "onnx_copy"
    folder = toy_run / "deploy" / "toy-device" / "onnxcopy"
    assert (folder / "model.onnxcopy").is_file() and (folder / "labels.txt").read_text().splitlines() == \
        report["stages"]["data"]["summary"]["classes"]
    card = (folder / "MODEL_CARD.md").read_text()
    assert "ONNX copy (a test's toy)" in card and json.loads((folder / "preprocess.json").read_text())
