"""Cache keys follow the code and the config fields that change a result, and nothing else."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_args, tiny_config
from pipeline.config import json_schema
from pipeline.core.section import NOT_IN_KEY
from pipeline.fingerprint import code_fingerprint
from pipeline.graph import Pipeline
from stages.benchmark import BenchmarkStage

ROOT = Path(__file__).resolve().parents[1]


def _keys(tmp_path, *extra) -> dict[str, str]:
    return {stage.name: stage.key for stage in Pipeline(tiny_config(tmp_path, *extra)).plan()}


def test_where_data_comes_from_and_thread_counts_leave_every_key_unchanged(tmp_path):
    before = _keys(tmp_path)
    assert _keys(tmp_path, "data.url='http://mirror.example/fmnist/'", "data.cache_dir='/elsewhere'",
                 "run.threads=1", "evaluate.threads=3", "report.title='other'") == before
    changed = _keys(tmp_path, "data.img_size=64")  # a field that does change results: every key moves
    assert all(changed[name] != key for name, key in before.items())


def test_the_schema_marks_the_fields_left_out_of_keys():
    data = json_schema()["$defs"]["DataConfig"]["properties"]
    assert data["url"][NOT_IN_KEY] and data["cache_dir"][NOT_IN_KEY]
    assert NOT_IN_KEY not in data["img_size"]


def test_a_stage_s_code_is_its_module_and_the_project_modules_it_imports():
    distill = code_fingerprint("stages.distill")
    assert {"stages/distill/__init__.py", "stages/distill/manifold.py", "stages/distill/features.py",
            "stages/training.py", "stages/models/__init__.py"} <= set(distill)
    assert not any(path.startswith("pipeline/") for path in distill)  # the engine is not part of it
    assert "stages/distill/manifold.py" not in code_fingerprint("stages.teacher")
    benchmark = code_fingerprint("stages.benchmark", BenchmarkStage.scripts)  # the agent's zipapp, adapters too
    assert {"targets/agent/cli.py", "targets/agent/schedule.py", "backends/onnx/agent.py",
            "backends/executorch/agent.py"} <= set(benchmark)


def _status(src: Path, args: list[str]) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-m", "pipeline", "status", *args[1:]], cwd=src, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {line.split("\t")[0]: line for line in done.stdout.splitlines()[1:]}  # TSV in a pipe


@pytest.mark.slow
def test_editing_a_stage_s_code_makes_status_say_so(tmp_path):
    """In a copy of the source tree: a comment changes nothing; a code change in a module the teacher imports
    (but the data stage does not) makes the teacher stale, naming the file."""
    src = tmp_path / "src"
    for package in ("pipeline", "backends", "stages", "targets"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    args = cli_args(tmp_path, "run", dataset="digits")
    done = subprocess.run([sys.executable, "-m", "pipeline", *args, "--until", "teacher"], cwd=src,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    batches = src / "stages" / "batches.py"
    batches.write_text(batches.read_text() + "\n# a comment changes no result\n")
    rows = _status(src, args)
    assert "cached" in rows["data"] and "cached" in rows["teacher"], rows

    batches.write_text(batches.read_text() + "\nEDITED = True\n")
    rows = _status(src, args)
    assert "cached" in rows["data"]
    assert "stale" in rows["teacher"] and "code changed (stages/batches.py)" in rows["teacher"], rows
