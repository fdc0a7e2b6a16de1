"""Devices: the agent on this host, over a real OpenSSH server on 127.0.0.1, and adb's commands."""
from __future__ import annotations

import getpass
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from targets.adb import AdbDevice, parse_adb_devices
from targets.devices import DeviceError, LocalDevice, SshDevice, make_device, model_files
from targets.profiles import TargetProfile

SSHD = Path("/usr/sbin/sshd")
EVIL_NAME = "m; touch INJECTED_A $(touch INJECTED_B) `touch INJECTED_C`.onnx"
INJECTED = ("INJECTED_A", "INJECTED_B", "INJECTED_C")


def profile(**fields) -> TargetProfile:
    return TargetProfile.model_validate({"runtime": "onnxruntime", **fields})


def agent_args(runtime: str = "onnxruntime", *extra: str) -> list[str]:
    return ["--runtime", runtime, "--threads", "1", "--runs", "20", "--warmup", "2", "--throughput-batch", "1",
            *extra]


def write_onnx(path: Path) -> Path:
    """Flatten -> MatMul -> Add -> Relu on a (N, 1, 4, 4) input, built directly with onnx.helper."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(16, 8)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b")
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["sum"]), helper.make_node("Relu", ["sum"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import openvino as ov

    folder = tmp_path_factory.mktemp("models")
    onnx_path = write_onnx(folder / "tiny.onnx")
    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "tiny.xml"), compress_to_fp16=False)
    (folder / "not-a-model.onnx").write_text("this is not a model\n")
    return {"onnx": onnx_path, "openvino": folder / "tiny.xml", "junk": folder / "not-a-model.onnx"}


def check_result(result: dict, model: Path) -> None:
    latency = result["latency_ms"]
    assert result["ok"] is True
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert result["runs"] == 20 and result["threads"] == 1
    assert result["model_bytes"] == sum(p.stat().st_size for p in model_files(model))
    layers = result["profile"]
    assert layers["by_op_type"] and layers["run_ms"] > 0 and layers["layers_ms"] > 0
    assert sum(entry["share"] for entry in layers["by_op_type"]) == pytest.approx(1.0)
    if result["runtime"] == "onnxruntime":  # its kernel events nest inside the run's event; OpenVINO's per-node
        assert layers["layers_ms"] <= 1.05 * layers["run_ms"]  # counters are timed apart from its latency


# --- this host ---------------------------------------------------------------------------------------------

def test_model_files(models, tmp_path):
    assert model_files(models["openvino"]) == [models["openvino"], models["openvino"].with_suffix(".bin")]
    assert model_files(models["onnx"]) == [models["onnx"]]
    external = write_onnx(tmp_path / "ext.onnx")
    (tmp_path / "ext.onnx.data").write_bytes(b"\0")
    assert model_files(external) == [external, tmp_path / "ext.onnx.data"]
    package = tmp_path / "m.mlpackage"
    package.mkdir()
    assert model_files(package) == [package]
    with pytest.raises(DeviceError) as error:
        model_files(tmp_path / "missing.onnx")
    assert error.value.kind == "bad_model"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_local_benchmark(models, runtime):
    model = models["onnx" if runtime == "onnxruntime" else "openvino"]
    device = make_device(profile(runtime=runtime), "laptop")
    assert isinstance(device, LocalDevice) and device.label == "proxy" and device.connection == "local"
    device.check()
    check_result(device.run_agent(model, agent_args(runtime, "--profile"), timeout=120), model)


def test_local_agent_errors(models):
    device = make_device(profile(), "laptop")
    with pytest.raises(DeviceError) as error:
        device.run_agent(models["junk"], agent_args(), timeout=120)
    assert error.value.kind == "bad_model" and "not-a-model.onnx" in str(error.value)
    assert "laptop" in str(error.value) and "\n" not in str(error.value)
    if sys.platform != "darwin":
        with pytest.raises(DeviceError) as error:
            device.run_agent(models["onnx"], agent_args("coreml"), timeout=120)
        assert error.value.kind == "needs_macos" and "Mac" in str(error.value)
    with pytest.raises(DeviceError) as error:
        device.run_agent(models["onnx"].with_name("absent.onnx"), agent_args(), timeout=120)
    assert error.value.kind == "bad_model" and "absent.onnx" in str(error.value)


def test_local_timeout(models):
    with pytest.raises(DeviceError) as error:
        make_device(profile(), "laptop").run_agent(models["onnx"], [*agent_args(), "--runs", "100000000",
                                                                    "--max-seconds", "60"], timeout=1)
    assert error.value.kind == "timeout" and "timeout_s" in str(error.value)


def test_local_odd_file_name(models, tmp_path):
    evil = tmp_path / EVIL_NAME
    shutil.copy(models["onnx"], evil)
    result = make_device(profile(), "laptop").run_agent(evil, agent_args(), timeout=120)
    assert result["model"] == EVIL_NAME
    assert not any((folder / name).exists() for folder in (tmp_path, Path.cwd()) for name in INJECTED)


# --- ssh: a real OpenSSH server on 127.0.0.1 ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen, log: Path) -> None:
    for _ in range(100):
        if server.poll() is not None:
            pytest.fail(f"sshd exited with status {server.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A throwaway sshd on a free local port, with its own host key, client key and known_hosts."""
    if not SSHD.exists():
        reason = f"{SSHD} not installed: apt-get install openssh-server (make test-tools installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = free_port()
    (folder / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\n"
        f"PidFile {folder / 'sshd.pid'}\nSubsystem sftp internal-sftp\n")
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (folder / "empty_known_hosts").write_text("")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    log = folder / "sshd.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(folder / "sshd_config")], stdout=out, stderr=out)
    try:
        wait_for_port(port, server, log)
        yield {"folder": folder, "port": port}
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def remote_dir(tmp_path) -> Path:
    folder = tmp_path / "remote"
    folder.mkdir()
    return folder


def ssh_profile(sshd, remote_dir: Path, **fields) -> TargetProfile:
    folder = sshd["folder"]
    return profile(**{"connection": "ssh", "host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(),
                      "identity_file": str(folder / "client_key"), "known_hosts_file": str(folder / "known_hosts"),
                      "python": sys.executable, "remote_dir": str(remote_dir), **fields})


def test_ssh_benchmark(sshd, remote_dir, models):
    device = make_device(ssh_profile(sshd, remote_dir), "board")
    assert isinstance(device, SshDevice) and device.label == "measured" and device.connection == "ssh"
    device.check()
    result = device.run_agent(models["onnx"], agent_args(), timeout=120)
    assert result["ok"] and result["model"] == "tiny.onnx" and result["runs"] == 20
    assert list(remote_dir.iterdir()) == []


def test_ssh_openvino_sidecar(sshd, remote_dir, models):
    result = make_device(ssh_profile(sshd, remote_dir), "board").run_agent(
        models["openvino"], agent_args("openvino"), timeout=120)
    assert result["model_bytes"] == sum(p.stat().st_size for p in model_files(models["openvino"]))
    assert list(remote_dir.iterdir()) == []


def test_ssh_unknown_host_key(sshd, remote_dir, models):
    unknown = ssh_profile(sshd, remote_dir, known_hosts_file=str(sshd["folder"] / "empty_known_hosts"))
    for attempt in (lambda d: d.check(), lambda d: d.run_agent(models["onnx"], agent_args(), timeout=60)):
        with pytest.raises(DeviceError) as error:
            attempt(make_device(unknown, "board"))
        assert error.value.kind == "unreachable" and "host key" in str(error.value)
        assert "ssh-keyscan" in str(error.value) and "board" in str(error.value)
    assert (sshd["folder"] / "empty_known_hosts").read_text() == ""


def test_ssh_wrong_port(sshd, remote_dir):
    with pytest.raises(DeviceError) as error:
        make_device(ssh_profile(sshd, remote_dir, port=free_port()), "board").check()
    assert error.value.kind == "unreachable" and "127.0.0.1" in str(error.value)


def test_ssh_runtime_missing(sshd, remote_dir, models):
    python = "/usr/bin/python3"
    if not Path(python).exists() or subprocess.run([python, "-c", "import onnxruntime"],
                                                   capture_output=True).returncode == 0:
        pytest.skip(f"needs a {python} without onnxruntime")
    with pytest.raises(DeviceError) as error:
        make_device(ssh_profile(sshd, remote_dir, python=python), "board").run_agent(
            models["onnx"], agent_args(), timeout=60)
    assert error.value.kind == "runtime_missing" and "pip install" in str(error.value)
    assert list(remote_dir.iterdir()) == []


def test_ssh_no_python(sshd, remote_dir, models):
    with pytest.raises(DeviceError) as error:
        make_device(ssh_profile(sshd, remote_dir, python="/nonexistent/python3"), "board").run_agent(
            models["onnx"], agent_args(), timeout=60)
    assert error.value.kind == "runtime_missing" and "/nonexistent/python3" in str(error.value)
    assert "[targets.board]" in str(error.value)
    assert list(remote_dir.iterdir()) == []


def test_ssh_bad_model_and_timeout_clean_up(sshd, remote_dir, models):
    device = make_device(ssh_profile(sshd, remote_dir), "board")
    with pytest.raises(DeviceError) as error:
        device.run_agent(models["junk"], agent_args(), timeout=60)
    assert error.value.kind == "bad_model" and "not-a-model.onnx" in str(error.value)
    assert list(remote_dir.iterdir()) == []
    with pytest.raises(DeviceError) as error:  # the orphaned remote agent stops itself after --max-seconds
        device.run_agent(models["onnx"], [*agent_args(), "--runs", "100000000", "--max-seconds", "3"], timeout=1)
    assert error.value.kind == "timeout"
    assert list(remote_dir.iterdir()) == []


def test_ssh_odd_file_name_is_not_executed(sshd, remote_dir, models, tmp_path):
    evil = tmp_path / EVIL_NAME
    shutil.copy(models["onnx"], evil)
    result = make_device(ssh_profile(sshd, remote_dir), "board").run_agent(evil, agent_args(), timeout=120)
    assert result["ok"] and result["model"] == EVIL_NAME
    assert list(remote_dir.iterdir()) == []
    places = (tmp_path, remote_dir, Path.cwd(), Path.home(), Path("/tmp"))
    assert not any((folder / name).exists() for folder in places for name in INJECTED)


def test_ssh_commands():
    base = dict(connection="ssh", host="pi.local", user="pi", port=2222)
    device = SshDevice(profile(**base), "pi")
    command = device.shell_command(["python3", "/tmp/a b/$(x).onnx"])
    assert command[:1] == ["ssh"] and command[-3:] == ["--", "pi@pi.local", "python3 '/tmp/a b/$(x).onnx'"]
    assert "StrictHostKeyChecking=yes" in command and "BatchMode=yes" in command and "-i" not in command
    assert command[command.index("-p") + 1] == "2222"
    lax = SshDevice(profile(**base, strict_host_key_checking=False, identity_file="/k/id"), "pi")
    command = lax.copy_command([Path("/m/a b.onnx")], "/tmp/manifold-edge.x")
    assert "StrictHostKeyChecking=no" in command and command[command.index("-i") + 1] == "/k/id"
    assert command[command.index("-P") + 1] == "2222" and "-r" not in command
    assert command[-2:] == ["/m/a b.onnx", "pi@pi.local:/tmp/manifold-edge.x/"]
    ipv6 = SshDevice(profile(connection="ssh", host="fd00::1"), "v6")
    assert ipv6.copy_command([Path("/m.onnx")], "/tmp/d")[-1] == "[fd00::1]:/tmp/d/"


# --- adb ----------------------------------------------------------------------------------------------------

def test_adb_commands():
    with_serial = AdbDevice(profile(connection="adb", serial="R58M123"), "phone")
    without = AdbDevice(profile(connection="adb"), "phone")
    assert with_serial.copy_command([Path("/m/a b.onnx"), Path("/agent.pyz")], "/data/local/tmp/d") == \
        ["adb", "-s", "R58M123", "push", "/m/a b.onnx", "/agent.pyz", "/data/local/tmp/d/"]
    assert without.copy_command([Path("/m.onnx")], "/d") == ["adb", "push", "/m.onnx", "/d/"]
    argv = ["python3", f"/data/local/tmp/d/{EVIL_NAME}", "--threads", "4"]
    command = with_serial.shell_command(argv)
    assert command[:4] == ["adb", "-s", "R58M123", "shell"] and len(command) == 5
    assert shlex.split(command[-1]) == argv
    assert without.shell_command(["ls"]) == ["adb", "shell", "ls"]


def test_adb_shell_string_is_inert(tmp_path):
    """The string adb hands to the device's sh, run by this host's sh: printed, never executed."""
    command = AdbDevice(profile(connection="adb"), "phone").shell_command(["printf", "%s", EVIL_NAME])
    out = subprocess.run(["sh", "-c", command[-1]], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout == EVIL_NAME and list(tmp_path.iterdir()) == []


def test_parse_adb_devices():
    text = ("* daemon started successfully\nList of devices attached\nR58M123\tdevice\n"
            "emulator-5554\tunauthorized\n\n")
    assert parse_adb_devices(text) == {"R58M123": "device", "emulator-5554": "unauthorized"}
    assert parse_adb_devices("List of devices attached\n\n") == {}


@pytest.fixture
def adb_server():
    """adb itself (its server is stopped after the session by conftest's stop_adb_server)."""
    if shutil.which("adb") is None:
        pytest.skip("adb not installed: apt-get install adb (make test-tools installs it)")


def test_adb_device(adb_server, models):
    listed = subprocess.run(["adb", "devices"], capture_output=True, text=True, timeout=30).stdout
    ready = [s for s, state in parse_adb_devices(listed).items() if state == "device"]
    device = make_device(profile(connection="adb", serial=ready[0] if ready else None), "phone")
    if not ready:
        with pytest.raises(DeviceError) as error:
            device.check()
        assert error.value.kind == "unreachable" and "adb devices" in str(error.value)
        assert "phone" in str(error.value) and "USB debugging" in str(error.value)
        return
    device.check()
    result = device.run_agent(models["onnx"], agent_args(), timeout=300)
    assert result["ok"] and result["runs"] == 20


# What the tools print (their formats as of LiteRT 2.x and ExecuTorch 1.x; numbers made up per model)
BENCHMARK_MODEL_OUTPUT = """INFO: Loaded model {model}
INFO: The input model file size (MB): 0.23
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: Running benchmark for at least 1 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count={runs} first=310 curr=250 min=240 max=310 avg={avg_us} std=12 p5=241 median=249 p95=300

INFO: Inference timings in us: Init: 5579, First inference: 310, Warmup (avg): 0, Inference (avg): {avg_us}
INFO: Overall peak memory footprint (MB) via periodic monitoring: 9.25
"""
EXECUTOR_RUNNER_OUTPUT = """I 00:00:00.001 executorch:executor_runner.cpp:171] Model file {model} is loaded.
I 00:00:00.002 executorch:executor_runner.cpp:214] Setting up planned buffer 0, size 1048576.
I 00:00:00.090 executorch:executor_runner.cpp:330] Model executed successfully {runs} time(s) in {total_ms} ms.
"""


def test_native_tool_outputs_parse():
    from targets.native_tools import parse_benchmark_model, parse_executor_runner

    run = parse_benchmark_model(BENCHMARK_MODEL_OUTPUT.format(model="m.tflite", runs=40, avg_us="2.95034e+03"))
    assert (run.runs, run.mean_ms, run.init_ms, run.memory_mb) == (40, 2.95034, 5.579, 9.25)
    run = parse_executor_runner(EXECUTOR_RUNNER_OUTPUT.format(model="m.pte", runs=40, total_ms="12.000000"))
    assert (run.runs, run.mean_ms, run.memory_mb) == (40, 0.3, 1.0)
    with pytest.raises(ValueError, match="prints no time"):
        parse_executor_runner("Model executed successfully 40 time(s).")
    with pytest.raises(ValueError, match="Inference timings"):
        parse_benchmark_model("ERROR: Could not open 'm.tflite'.")


def fake_phone(tmp_path: Path, monkeypatch) -> Path:
    """A phone stand-in: an `adb` on PATH that lists one device, pushes with cp and runs `adb shell`
    commands here with sh (as the phone's sh would), a `getprop`; the device's remote_dir is a local folder."""
    phone, bin_dir = tmp_path / "phone", tmp_path / "bin"
    phone.mkdir(), bin_dir.mkdir()
    scripts = {
        "adb": '#!/bin/sh\nif [ "$1" = devices ]; then printf "List of devices attached\\nR58M123\\tdevice\\n"; '
               'exit 0; fi\nif [ "$1" = shell ]; then shift; exec sh -c "$1"; fi\n'
               'if [ "$1" = push ]; then shift; for last; do :; done; n=$(($# - 1)); i=0\n'
               'for f; do i=$((i + 1)); [ $i -le $n ] && cp "$f" "$last"; done; exit 0; fi\nexit 1\n',
        "getprop": '#!/bin/sh\ncase "$1" in ro.product.cpu.abi) echo arm64-v8a;; ro.soc.model) echo SM8650;; '
                   'ro.product.model) echo "Galaxy S24";; esac\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return phone


AVG_US, TOTAL_MS = "$((size * 200))", "$((runs * size * 2 / 10)).$((runs * size * 2 % 10))"  # 0.2 ms x size


@pytest.mark.parametrize("runtime, tool", [("litert", "benchmark_model"), ("executorch", "executor_runner")])
def test_adb_times_executorch_and_litert_with_their_native_tool(tmp_path, monkeypatch, runtime, tool):
    """Without the tool in remote_dir the error says how to put it there; with it (a stand-in script that
    logs its command line and prints the real tool's output format: the tools are Android binaries), the
    models are pushed, timed in alternating blocks with the profile's threads, and parsed into rows."""
    phone = fake_phone(tmp_path, monkeypatch)
    device = AdbDevice(profile(connection="adb", remote_dir=str(phone), runtime=runtime), "phone")
    device.check()
    suffix = ".tflite" if runtime == "litert" else ".pte"
    models = [tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"]
    for i, m in enumerate(models):
        m.write_bytes(b"x" * (1000 * (i + 1)))
    args = agent_args(runtime, "--rel-interval", "0.05")
    args[args.index("--threads") + 1] = "4"
    with pytest.raises(DeviceError, match=rf"{phone}/{tool} is missing: .*adb push {tool} {phone}/{tool}") as err:
        device.run_agent(models, args, 30)
    assert err.value.kind == "tool_missing"
    output = BENCHMARK_MODEL_OUTPUT if runtime == "litert" else EXECUTOR_RUNNER_OUTPUT
    (phone / tool).write_text(  # model a: 0.2 ms a run, model b: 0.4 ms
        '#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls.log"\nruns=4\nsize=1\n'
        'for arg; do case "$arg" in --num_runs=*|--num_executions=*) runs=${arg#*=};; *b.*) size=2;; esac; done\n'
        f"cat <<EOF\n{output.format(model='m', runs='$runs', avg_us=AVG_US, total_ms=TOTAL_MS)}EOF\n")
    (phone / tool).chmod(0o755)
    result = device.run_agent(models, args, 60)
    a, b = result["results"]
    assert (a["model"], b["model"]) == (f"a{suffix}", f"b{suffix}")
    assert a["latency_ms"]["p50"] == pytest.approx(0.2) and b["latency_ms"]["p50"] == pytest.approx(0.4)
    assert a["runs"] == 20 and a["warmup_runs"] == 4 and a["timing"]["interleaved_with"] == [f"b{suffix}"]
    assert a["host"] == {"system": "Android", "machine": "arm64-v8a", "cpu": "SM8650", "device": "Galaxy S24",
                         "cores": os.cpu_count()}
    assert a["model_rss_mb"] == (9.25 if runtime == "litert" else pytest.approx(1 + 1000 / 2**20))
    calls = (phone / "calls.log").read_text().splitlines()
    assert len(calls) == 12 and [c.split("/")[-1].split()[0][0] for c in calls[:4]] == ["a", "b", "a", "b"]
    assert all(("--num_threads=4" if runtime == "litert" else "--cpu_threads=4") in c for c in calls)
    assert sorted(p.name for p in phone.iterdir()) == sorted(["calls.log", tool])  # the temp folder is gone
