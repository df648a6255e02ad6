"""Facts about the machine a figure was measured on, and the memory this process uses."""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any


def host_info() -> dict[str, Any]:
    """The facts that make a latency figure comparable: CPU model, cores, OS, Python, and where readable the board
    (Jetson, Raspberry Pi), the Jetson power mode and an NVIDIA GPU."""
    cpu = platform.processor() or platform.machine()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
                            "os": platform.platform(), "python": platform.python_version()}
    if board := (_read("/proc/device-tree/model") or "").strip("\x00 \n"):  # Jetsons and Raspberry Pis have one
        info["board"] = board
    if mode := _jetson_power_mode():
        info["power_mode"] = mode
    if "board" not in info and shutil.which("nvidia-smi"):  # a discrete GPU
        info["gpu"] = _output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return info


def host_key() -> dict[str, Any]:
    """What a latency figure is reusable across: the same kind of machine."""
    info = host_info()
    return {"cpu": info["cpu"], "cores": info["cores"], "gpu": info.get("gpu"), "board": info.get("board")}


def device_name(host: dict[str, Any]) -> str:
    """A short name for the machine a figure was measured on: the board, else the GPU or CPU model."""
    name = host.get("board") or host.get("gpu") or host["cpu"]
    return re.sub(r"\((R|TM|tm)\)|\s+CPU\b|\s+@.*|\s+\d+-Core Processor", "", name).strip()


def rss_mb() -> float:
    """Resident memory of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # no procfs: the peak is the best figure there is
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process. VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a worker
    started from a large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS reports bytes


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _jetson_power_mode() -> str | None:
    """The Jetson's nvpmodel power mode (it sets clocks and cores, so latency depends on it), or None."""
    if shutil.which("nvpmodel"):
        for line in _output(["nvpmodel", "-q"]).splitlines():
            if line.startswith("NV Power Mode:"):
                return line.split(":", 1)[1].strip()
    conf = _read("/etc/nvpmodel.conf")
    return power_mode_from(conf, _read("/var/lib/nvpmodel/status")) if conf else None


def power_mode_from(conf: str, status: str | None) -> str | None:
    """The power mode's name from nvpmodel.conf and nvpmodel's status file (`pmode:0002 ...`); without a status,
    the conf's default mode, marked as such."""
    names = dict(re.findall(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", conf))
    if status and (current := re.search(r"pmode:(\d+)", status)):
        mode = str(int(current.group(1)))
        return names.get(mode, f"mode {mode}")
    if default := re.search(r"PM_CONFIG\s+DEFAULT=(\d+)", conf):
        return f"{names.get(default.group(1), 'mode ' + default.group(1))} (the default; current mode unreadable)"
    return None
