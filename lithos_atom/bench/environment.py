"""What a benchmark ran on: device, driver and library versions, for every JSON."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

_PACKAGES = ("cupy-cuda13x", "numba-cuda", "numba", "cuda-bindings", "cuda-core", "numpy", "nvidia-ml-py", "lithos")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages lithos runs on."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_info() -> dict[str, Any] | None:
    """Name, SM count, clocks and driver of GPU 0 through NVML and the driver, or None without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver / no GPU: the caller reports the simulated device instead
        return None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        info: dict[str, Any] = {
            "name": pynvml.nvmlDeviceGetName(handle),
            "driver": pynvml.nvmlSystemGetDriverVersion(),
            "cuda_driver_version": pynvml.nvmlSystemGetCudaDriverVersion_v2(),
            "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
            "memory_total_mib": pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20,
        }
    finally:
        pynvml.nvmlShutdown()
    try:
        import cupy

        info["multiprocessors"] = cupy.cuda.Device().attributes["MultiProcessorCount"]
        info["compute_capability"] = cupy.cuda.Device().compute_capability
    except Exception as exc:  # NVML sees a GPU CUDA cannot use: say so rather than guess
        info["cuda_error"] = repr(exc)
    return info


def environment() -> dict[str, Any]:
    """The full environment record of a benchmark run."""
    gpu = gpu_info()
    return {
        "simulated": gpu is None,
        "gpu": gpu,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
    }
