"""An Android phone or watch over adb: the agent pushed and run with `adb shell`, and ExecuTorch / LiteRT files
timed by their projects' own native tools (targets/native_tools.py). The remote steps it shares with ssh devices
are targets/devices.py's RemoteDevice."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from targets import native_tools
from targets.agent.cli import parse
from targets.devices import SETUP_TIMEOUT_S, Deadline, DeviceError, RemoteDevice, as_list, last_line, names_of


# Android has no Python runtime for these formats: each is timed by its project's own command-line tool,
# built for arm64-v8a and pushed to the target's remote_dir.
def parse_adb_devices(text: str) -> dict[str, str]:
    """Serial -> state ('device', 'unauthorized', 'offline', ...) from `adb devices` output."""
    devices = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            devices[parts[0]] = parts[1]
    return devices


class AdbDevice(RemoteDevice):
    """An Android phone or watch over adb (push, then `adb shell` with one quoted command string)."""

    connection = "adb"

    @property
    def where(self) -> str:
        return f"adb device {self.profile.serial}" if self.profile.serial else "the adb device"

    def adb(self, *args: str) -> list[str]:
        serial = ["-s", self.profile.serial] if self.profile.serial else []
        return ["adb", *serial, *args]

    def shell_command(self, argv: list[str]) -> list[str]:
        return self.adb("shell", shlex.join(argv))

    def copy_command(self, files: list[Path], remote_dir: str) -> list[str]:
        return self.adb("push", *map(str, files), f"{remote_dir}/")

    def unreachable(self, proc: subprocess.CompletedProcess) -> DeviceError | None:
        lines = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "adb:"))]
        lost = [line for line in lines if re.search(r"no devices|not found|offline|unauthorized|no emulators", line)]
        if proc.returncode == 0 or not lost:
            return None
        return DeviceError("unreachable", f"{self.target}: adb lost the device ({lost[-1]}); reconnect it and "
                                          "check `adb devices`")

    def run_agent(self, model: Path | Sequence[Path], agent_args: list[str], timeout: float) -> dict:
        """ONNX Runtime (and OpenVINO) models through the Python agent under Termux, in one call; ExecuTorch and
        LiteRT have no Python runtime on Android: their own benchmark tools time them (targets/native_tools.py),
        one runtime at a time. Results in the order of the models."""
        models = as_list(model)
        runtimes = parse([*map(str, models), *agent_args]).runtimes
        parts: dict[str | None, list[int]] = {}  # None: the agent's models; else a native tool's runtime
        for i, runtime in enumerate(runtimes):
            parts.setdefault(runtime if runtime in native_tools.NATIVE_TOOLS else None, []).append(i)
        if list(parts) == [None]:
            return super().run_agent(models, agent_args, timeout)
        deadline = Deadline(timeout)
        results: list[dict] = [{}] * len(models)
        for runtime, indexes in parts.items():
            subset = [models[i] for i in indexes]
            at = agent_args.index("--runtime") + 1
            args = [*agent_args[:at], ",".join(runtimes[i] for i in indexes), *agent_args[at + 1:]]
            out = (self.run_native_tool(subset, runtime, args, deadline.left()) if runtime else
                   super().run_agent(subset, args, deadline.left()))
            for i, result in zip(indexes, out.get("results", [out])):
                results[i] = result
        return results[0] if len(results) == 1 else {"ok": True, "results": results}

    def run_native_tool(self, models: list[Path], runtime: str, agent_args: list[str], timeout: float) -> dict:
        """Time each model with the runtime's own tool in remote_dir, the models alternating block by block."""
        tool, how = native_tools.NATIVE_TOOLS[runtime]
        path = f"{self.profile.remote_dir.rstrip('/')}/{tool}"
        found = self.run(self.shell_command(["test", "-x", path]), SETUP_TIMEOUT_S, f"looking for {tool}")
        if found.returncode:
            raise DeviceError("tool_missing", f"{self.target}: {runtime} is timed on Android by {tool}, and "
                                              f"{path} is missing: {how}, then adb push {tool} {path} && adb "
                                              f"shell chmod +x {path}", models[0].name)
        options = parse([*map(str, models), *agent_args])  # the settings the agent would time with
        threads = options.threads or 1
        per_block = max(1, options.runs // (native_tools.BLOCKS - 1))
        models = [m.absolute() for m in models]
        deadline = Deadline(timeout)
        with self.staged(models, names_of(models), deadline) as folder:
            host = self.android_host()
            blocks: dict[str, list] = {m.name: [] for m in models}
            for _ in range(native_tools.BLOCKS):
                for m in models:
                    argv = native_tools.tool_argv(runtime, path, f"{folder}/{m.name}", threads, per_block)
                    proc = self.run(self.shell_command(argv), deadline.left(), f"{tool} on {m.name}")
                    try:
                        blocks[m.name].append(native_tools.PARSERS[runtime](proc.stdout + proc.stderr))
                    except ValueError as exc:
                        raise DeviceError("bad_model", f"{self.target}: {tool} on {m.name} (exit {proc.returncode}"
                                                       f"): {last_line(proc.stderr) or last_line(proc.stdout)} "
                                                       f"({exc})", m.name) from None
        results = [native_tools.result(runtime, m.name, m.stat().st_size, blocks[m.name],
                                       [o.name for o in models if o != m], threads, options.rel_interval, host)
                   for m in models]
        return results[0] if len(results) == 1 else {"ok": True, "results": results}

    def android_host(self) -> dict:
        """The phone as the agent describes a host: ABI, SoC (or model name), cores."""
        proc = self.run(self.shell_command(["sh", "-c", "getprop ro.product.cpu.abi; getprop ro.soc.model; "
                                                        "getprop ro.product.model; nproc"]),
                        SETUP_TIMEOUT_S, "reading the device's properties")
        abi, soc, model, cores = ([line.strip() for line in proc.stdout.splitlines()] + ["", "", "", ""])[:4]
        return {"system": "Android", "machine": abi or "unknown", "cpu": soc or model or "unknown",
                "device": model or None, "cores": int(cores) if cores.isdigit() else None}

    def check(self) -> None:
        """Raise DeviceError('unreachable') unless adb is installed and lists the device as ready."""
        if shutil.which("adb") is None:
            raise DeviceError("unreachable", f"{self.target}: adb not installed: apt install adb "
                                             "(or Android platform-tools)")
        proc = self.run(["adb", "devices"], SETUP_TIMEOUT_S, "listing adb devices")
        devices = parse_adb_devices(proc.stdout)
        listed = ", ".join(f"{s} ({state})" for s, state in devices.items()) or "none"
        serial = self.profile.serial
        if serial is None and len(devices) > 1:
            raise DeviceError("unreachable", f"{self.target}: several adb devices ({listed}); set serial in "
                                             f"[targets.{self.name}]")
        state = devices.get(serial) if serial else next(iter(devices.values()), None)
        if state != "device":
            fix = ("unlock it and accept the USB debugging prompt" if state == "unauthorized" else
                   "connect it with USB debugging on (or `adb connect HOST:PORT`)")
            status = "not listed" if state is None else state
            raise DeviceError("unreachable", f"{self.target}: {status} in `adb devices` (listed: {listed}); {fix}")
