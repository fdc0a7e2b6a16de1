"""Inputs a careless or hostile user gives: each is one line on stderr naming the field and the fix, the
right exit code, no traceback, and nothing written under run.output_dir."""
from __future__ import annotations

import json

import pytest
from test_devices import free_port, write_onnx

from pipeline.cli import NOTHING_MEASURED, main


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err, err[:2000]
    assert len(err.splitlines()) == 1 and len(err) < 300, err[:2000]
    return err


@pytest.mark.parametrize("options, fragment", [
    (["--set", 'run.output_dir="a\\u0000b"'], "run.output_dir: has a NUL character"),
    (["--set", 'data.path="x\\u0000"'], "data.path: has a NUL character"),
    (["--set", "distill.student_layers=[-1]", "--set", "distill.teacher_layers=[1]"],
     "distill.student_layers: [-1] is negative"),
    (["--set", "distill.student_layers=[1,1]", "--set", "distill.teacher_layers=[2,3]"],
     "distill.student_layers: [1] given more than once"),
    (["--set", "distill.student_layers=[0,1]", "--set", "distill.teacher_layers=[2,2]"],
     "distill.teacher_layers: [2] given more than once"),
    (["--set", "quantize.op_types=['Foo']"], "quantize.op_types: ['Foo'] is not an op type ONNX Runtime quantizes"),
    (["--set", "quantize.op_types=['matmul']"], "did you mean 'MatMul'?"),
    (["--set", "benchmark.enabled=false", "--set", "benchmark.targets=['andriod-phone']"],
     "no target profile 'andriod-phone' (did you mean 'android-phone'?)"),
    (["--until", "data", "--force", "export"], "--force export with --until data: the run stops before export"),
    (["--force", "x" * 100_000], "--force 'xxxx"),
    (["--set", "teacher.model='" + "x" * 100_000 + "'"], "(100,002 characters) is not a timm model"),
])
def test_bad_run_options_are_one_line_and_write_nothing(tmp_path, capsys, options, fragment):
    runs = tmp_path / "runs"
    assert main(["run", "--set", f"run.output_dir='{runs}'", *options]) == 2
    assert fragment in one_line_error(capsys)
    assert not runs.exists()


def test_a_config_path_that_is_a_folder_says_so(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path)]) == 2
    assert f"config file {tmp_path} is a folder: pass the pipeline.toml inside it" in one_line_error(capsys)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return write_onnx(tmp_path_factory.mktemp("bench") / "tiny.onnx")


def test_bench_json_that_is_a_folder_is_refused_before_timing(tiny_onnx, tmp_path, capsys):
    assert main(["bench", str(tiny_onnx), "--target", "x86-laptop", "--json", str(tmp_path)]) == 2
    assert f"--json {tmp_path}: is a folder; give a file name" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_bench_exits_non_zero_when_every_measurement_failed(tiny_onnx, tmp_path, capsys):
    """A device that refuses ssh, with the proxy fallback off: the row says why, the JSON is written, and the
    command does not claim success."""
    profile = ["targets.gone.runtime='onnxruntime'", "targets.gone.connection='ssh'", "targets.gone.host='127.0.0.1'",
               f"targets.gone.port={free_port()}", "benchmark.proxy_when_unreachable=false"]
    args = ["bench", str(tiny_onnx), "--target", "gone", "--json"]
    assert main([*args, *[a for o in profile for a in ("--set", o)]]) == NOTHING_MEASURED
    out, err = capsys.readouterr()
    assert err.strip() == "error: nothing was measured: all 1 measurement(s) failed (each row's error says why)"
    (row,) = json.loads(out)["rows"]
    assert row["label"] == "needs-device" and "ssh" in row["error"] and "latency_ms" not in row


@pytest.mark.parametrize("field", ["teacher.checkpoint", "teacher.pretrained_file"])
def test_a_raw_pickle_as_checkpoint_is_one_line_without_torch_s_warning(tmp_path, capsys, field):
    """A file pickled with protocol 4 (not torch's): refused by the weights-only loader, said in our one line;
    torch's multi-line UserWarning about the protocol is not printed before it."""
    import pickle
    import warnings

    (tmp_path / "raw.pt").write_bytes(pickle.dumps(print, protocol=4))
    sets = [f"run.output_dir='{tmp_path / 'runs'}'", f"{field}='{tmp_path / 'raw.pt'}'"]
    if field == "teacher.pretrained_file":
        sets.append("teacher.pretrained=true")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["run", *[a for s in sets for a in ("--set", s)]]) == 2
    assert f"{field} = '{tmp_path / 'raw.pt'}' is not a" in one_line_error(capsys)
    assert not [w for w in caught if "pickle protocol" in str(w.message)]
    assert not (tmp_path / "runs").exists()
