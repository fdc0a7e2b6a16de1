"""The agent as one file (targets/agent/bundle.py): the zipapp runs alone, in an isolated interpreter outside
the source tree, with every project module it loads coming from inside it; its bytes do not depend on when or
where it is built."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from backends import agent_adapters
from targets.agent.bundle import build_zipapp, zipapp_file

ROOT = Path(__file__).resolve().parents[1]
# Run in place of `python agent.pyz ...` (runpy runs a zipapp as the interpreter does); then names every module of
# ours that was loaded from anywhere but the zipapp.
OUTSIDE = """import json, runpy, sys
sys.argv, code = sys.argv[1:], 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
ours = ("pipeline", "stages", "targets", "backends")
print(json.dumps(sorted(name for name, m in sys.modules.items() if name.split(".")[0] in ours
                        and not (getattr(m, "__file__", None) or "").startswith(sys.argv[0]))), file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A float model taking N x 1 x 4 x 4 images (N free) to 3 logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path_factory.mktemp("model")
    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "m.onnx")
    np.savez(folder / "images.npz", images=np.random.default_rng(1).normal(size=(5, 1, 4, 4)).astype(np.float32))
    return folder / "m.onnx"


def isolated(argv: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", *map(str, argv)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_the_zipapp_times_a_model_alone(model, tmp_path):
    """`python -I agent.pyz` from a folder outside the source tree: ok JSON, every project module from the zip."""
    agent = build_zipapp(tmp_path / "device")
    assert not tmp_path.is_relative_to(ROOT)
    done = isolated([agent, model, "--runtime", "onnxruntime", "--threads", "1", "--runs", "20", "--warmup", "1",
                     "--throughput-batch", "2", "--profile"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["ok"] and result["model"] == "m.onnx" and result["runs"] == 20
    assert result["input_shape"] == [1, 1, 4, 4]
    assert result["throughput"]["batch"] == 2 and result["profile"]["layers"]
    done = isolated(["-c", OUTSIDE, agent, model, "--runtime", "onnxruntime", "--predict",
                     model.with_name("images.npz")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["results"][0]["images"] == 5
    assert json.loads(done.stderr.splitlines()[-1]) == []  # nothing of ours but the zipapp's own modules
    done = isolated([agent, tmp_path / "absent.onnx", "--runtime", "onnxruntime"], cwd=tmp_path)
    assert done.returncode == 3 and json.loads(done.stdout)["kind"] == "bad_model"


def test_the_zipapp_holds_the_agent_its_adapters_and_a_registry_stub(tmp_path):
    names = zipfile.ZipFile(build_zipapp(tmp_path)).namelist()
    assert names == sorted(names) and "__main__.py" in names and "targets/agent/cli.py" in names
    assert "targets/agent/bundle.py" not in names and "pipeline/__init__.py" not in names
    for target in agent_adapters().values():
        module = target.partition(":")[0].replace(".", "/")
        assert f"{module}.py" in names and f"{module.rsplit('/', 1)[0]}/__init__.py" in names
    stub: dict = {}
    exec(zipfile.ZipFile(tmp_path / "agent.pyz").read("backends/__init__.py"), stub)
    assert stub["agent_adapters"]() == agent_adapters()


def test_building_twice_gives_the_same_bytes(tmp_path):
    first = build_zipapp(tmp_path / "a").read_bytes()
    assert build_zipapp(tmp_path / "b").read_bytes() == first
    cached = zipapp_file()
    assert cached.read_bytes() == first and zipapp_file() == cached  # kept under the hash of its bytes
    assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in zipfile.ZipFile(cached).infolist())
