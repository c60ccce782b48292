"""What machine and build the numbers come from: the header of every report."""
import datetime
import os
import platform

import torch

import fused_linreg

__all__ = ["cpu_model", "collect", "load_warning"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def collect(device: torch.device, dtype: torch.dtype) -> dict:
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "fused_linreg": fused_linreg.__version__,
        "build_info": fused_linreg.build_info(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def load_warning(info) -> str:
    """A note when other processes were busy as the run began, else ''."""
    load, cpus = info.get("load_average_1min"), info.get("cpu_count") or 1
    if load is None or load < 0.5 * cpus:
        return ""
    return (f"load average {load:.2f} on {cpus} CPUs as the run began: other processes compete, "
            "so the timings are noisy (multi-threaded ops may stall at OpenMP barriers)")
