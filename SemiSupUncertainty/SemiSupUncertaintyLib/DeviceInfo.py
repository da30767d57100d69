"""Which device the training will use, asked of the worker's interpreter before training starts.

The probe runs in a subprocess with the same interpreter and environment as the
worker, so it sees the torch build the worker will import (Slicer itself need not
import torch). It also lists the core library's methods when the library imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Callable

from .WorkerProcess import defaultPythonExecutable, windowsCreationFlags, workerEnvironment

__all__ = ["DeviceInfo", "queryDeviceInfo", "queryDeviceInfoAsync", "PROBE_CODE"]

PROBE_CODE = r"""
import json, sys
info = {"python": sys.version.split()[0]}
try:
    import torch
    info["torch"] = torch.__version__
    info["cuda_build"] = torch.version.cuda
    info["cuda"] = bool(torch.cuda.is_available())
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info["name"] = props.name
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
        info["count"] = torch.cuda.device_count()
    mps = getattr(torch.backends, "mps", None)
    info["mps"] = bool(mps is not None and mps.is_available())
except Exception as exc:
    info["error"] = f"{type(exc).__name__}: {exc}"
try:
    from semisup.methods import method_names
    info["methods"] = list(method_names())
except Exception as exc:
    info["semisup_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(info))
"""


@dataclass
class DeviceInfo:
    torchVersion: str = ""
    cudaBuild: str = ""
    cuda: bool = False
    name: str = ""
    memoryGiB: float | None = None
    count: int = 0
    mps: bool = False
    error: str = ""
    methods: list[str] = field(default_factory=list)
    libraryError: str = ""

    @property
    def usesGpu(self) -> bool:
        return self.cuda

    def summary(self) -> str:
        """One line for the GUI: the GPU with its memory, or the CPU fallback notice."""
        if self.error:
            return f"PyTorch is not usable in Slicer's Python ({self.error}): click 'Install dependencies'."
        if self.cuda:
            memory = f", {self.memoryGiB:.1f} GiB" if self.memoryGiB is not None else ""
            more = f" (+{self.count - 1} more)" if self.count > 1 else ""
            return f"GPU: {self.name}{memory}{more} · torch {self.torchVersion}, CUDA {self.cudaBuild}"
        return self.cpuNotice()

    def cpuNotice(self) -> str:
        why = (
            "this PyTorch is a CPU-only build"
            if not self.cudaBuild
            else f"this PyTorch (CUDA {self.cudaBuild}) sees no usable NVIDIA GPU or driver"
        )
        mps = " Apple GPU (MPS) is available but not used by default." if self.mps else ""
        return (
            f"No GPU: training will run on the CPU, typically 10-50 times slower ({why}; torch {self.torchVersion})."
            f"{mps} For an NVIDIA GPU, reinstall PyTorch with the PyTorch extension (PyTorch Utils module)."
        )

    @classmethod
    def fromJson(cls, data: dict) -> "DeviceInfo":
        return cls(
            torchVersion=str(data.get("torch") or ""),
            cudaBuild=str(data.get("cuda_build") or ""),
            cuda=bool(data.get("cuda", False)),
            name=str(data.get("name") or ""),
            memoryGiB=data.get("memory_gib"),
            count=int(data.get("count") or 0),
            mps=bool(data.get("mps", False)),
            error=str(data.get("error") or ""),
            methods=list(data.get("methods") or []),
            libraryError=str(data.get("semisup_error") or ""),
        )


def queryDeviceInfo(python: str | None = None, pythonPath=(), extraEnv: dict | None = None, timeout: float = 180.0) -> DeviceInfo:
    """Run the probe in the worker's interpreter (blocking; a few seconds, torch import included)."""
    from .Paths import coreLibraryParent

    args = [python or defaultPythonExecutable(), "-c", PROBE_CODE]
    env = workerEnvironment([coreLibraryParent(), *pythonPath], extraEnv)
    try:
        noWindow = {"creationflags": windowsCreationFlags(newProcessGroup=False)} if os.name == "nt" else {}  # no console pops up
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, **noWindow)
    except subprocess.TimeoutExpired:
        return DeviceInfo(error=f"the device check did not answer within {timeout:.0f} s")
    except OSError as exc:
        return DeviceInfo(error=f"could not start {args[0]}: {exc}")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return DeviceInfo.fromJson(json.loads(line))
            except ValueError:
                break
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return DeviceInfo(error=f"the device check failed: {tail}")


def queryDeviceInfoAsync(callback: Callable[[DeviceInfo], None], **kwargs) -> threading.Thread:
    """Run :func:`queryDeviceInfo` in a thread; ``callback`` runs in that thread (hand over to the GUI thread yourself)."""
    thread = threading.Thread(target=lambda: callback(queryDeviceInfo(**kwargs)), name="semisup-device-probe", daemon=True)
    thread.start()
    return thread
