"""The project as a user installs it: a wheel built from the source tree, installed into a fresh venv."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from pipeline import __version__
from targets.agent.bundle import build_zipapp

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = shutil.ignore_patterns(".git", ".venv", "runs", "tests", "bench", "__pycache__", "*.egg-info",
                                     "build", "dist", ".pytest_cache", ".ruff_cache")


def _run(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the source tree (the build writes into the tree it builds)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=NOT_SHIPPED)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist",
         tmp / "src", cwd=tmp)
    return next((tmp / "dist").glob("manifold_edge-*.whl"))


def test_the_wheel_carries_every_file_the_code_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("targets/profiles.toml", "targets/agent/cli.py", "targets/agent/bundle.py", "backends/onnx/agent.py",
                 "pipeline/cli.py", "stages/distill/manifold.py"):
        assert path in names, f"{path} is not in {wheel.name}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert wheel.name.startswith(f"manifold_edge-{__version__}-")


def test_an_installed_wheel_runs_outside_the_source_tree(wheel, tmp_path):
    """A fresh venv gets the wheel (the dependencies come from this venv, read-only, through a .pth file)."""
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    site = Path(_run(venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp_path).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    where = _run(venv / "bin" / "python", "-c", "import pipeline, targets; print(pipeline.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(site), "the source tree, not the wheel, was imported"
    cli = venv / "bin" / "manifold-edge"
    listing = _run(cli, "targets", cwd=tmp_path).stdout
    assert "android-phone" in listing and "apple-watch" in listing
    assert "run" in json.loads(_run(cli, "schema", cwd=tmp_path).stdout)["properties"]
    assert _run(cli, "--version", cwd=tmp_path).stdout.strip() == f"manifold-edge {__version__}"
    built = Path(_run(venv / "bin" / "python", "-m", "targets.agent.bundle", tmp_path, cwd=tmp_path).stdout.strip())
    assert built.read_bytes() == build_zipapp(tmp_path / "here").read_bytes()  # the agent, as the source tree ships it


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
def test_make_creates_the_venv_with_venv_args(tmp_path):
    """`make run VENV_ARGS=--system-site-packages` reuses a system torch (README): the flag reaches `venv`."""
    venv = tmp_path / "venv"
    done = _run("make", "-n", "setup", f"VENV={venv}", "VENV_ARGS=--system-site-packages", cwd=ROOT)
    assert f"-m venv --system-site-packages {venv}\n" in done.stdout

