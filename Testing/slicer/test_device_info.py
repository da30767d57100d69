"""GPU detection in the worker's interpreter, and the CPU fallback notice."""

from __future__ import annotations

import sys

from SemiSupUncertaintyLib.DeviceInfo import DeviceInfo, queryDeviceInfo


def test_probe_runs_in_the_worker_interpreter():
    import torch

    info = queryDeviceInfo(sys.executable)
    assert info.error == "" and info.torchVersion == torch.__version__
    assert info.cuda == torch.cuda.is_available()
    if info.cuda:
        assert info.name and info.memoryGiB > 0 and info.name in info.summary()
    else:
        assert info.summary().startswith("No GPU: training will run on the CPU")


def test_gpu_summary_names_the_card_and_its_memory():
    info = DeviceInfo.fromJson({"torch": "2.13.0+cu128", "cuda_build": "12.8", "cuda": True, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1, "count": 1})
    assert info.summary() == "GPU: NVIDIA H100 80GB HBM3, 79.1 GiB · torch 2.13.0+cu128, CUDA 12.8"


def test_cpu_fallback_notice_says_why():
    cpuBuild = DeviceInfo.fromJson({"torch": "2.13.0+cpu", "cuda_build": None, "cuda": False})
    assert "CPU-only build" in cpuBuild.summary() and "PyTorch extension" in cpuBuild.summary()
    noDriver = DeviceInfo.fromJson({"torch": "2.13.0+cu128", "cuda_build": "12.8", "cuda": False})
    assert "sees no usable NVIDIA GPU or driver" in noDriver.summary()


def test_missing_torch_or_interpreter_is_reported_not_raised(tmp_path):
    assert "Install dependencies" in DeviceInfo(error="ModuleNotFoundError: No module named 'torch'").summary()
    info = queryDeviceInfo(str(tmp_path / "no-python"))
    assert "could not start" in info.error


def test_no_console_window_on_windows_for_the_device_check_and_the_worker():
    """Windows cannot run here: the flags are the Win32 values, and both process starts use them."""
    import inspect

    from SemiSupUncertaintyLib import DeviceInfo as module
    from SemiSupUncertaintyLib.WorkerProcess import WorkerProcess, windowsCreationFlags

    assert windowsCreationFlags(newProcessGroup=False, osName="nt") == 0x08000000  # CREATE_NO_WINDOW
    assert windowsCreationFlags(osName="nt") == 0x08000000 | 0x00000200  # + CREATE_NEW_PROCESS_GROUP (CTRL_BREAK)
    assert windowsCreationFlags(osName="posix") == 0
    assert "windowsCreationFlags(newProcessGroup=False)" in inspect.getsource(module.queryDeviceInfo)
    assert "windowsCreationFlags()" in inspect.getsource(WorkerProcess.start)
