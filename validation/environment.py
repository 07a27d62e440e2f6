"""Where a run ran: device name, driver, and the versions of every package that changes memory or speed.

Versions come from package metadata (``importlib.metadata``), so asking does not import DeepSpeed or
bitsandbytes (slow, noisy imports). The driver version comes from NVML when ``nvidia-ml-py`` is installed,
else from ``nvidia-smi``.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

PACKAGES = ("torch", "transformers", "accelerate", "peft", "deepspeed", "bitsandbytes", "liger-kernel",
            "flash-attn", "tuneplan")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def driver_version() -> str | None:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:  # no NVML, no driver: fall back to nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(device: str) -> dict[str, str | None]:
    """Package versions, Python, CUDA / cuDNN as torch was built with, and the driver (CUDA runs)."""
    import torch

    out: dict[str, str | None] = {p: package_version(p) for p in PACKAGES}
    out["torch"] = torch.__version__
    out["python"] = platform.python_version()
    out["cuda"] = torch.version.cuda
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    out["driver"] = driver_version() if device == "cuda" else None
    return out


def device_name(device: str) -> str:
    """``NVIDIA H100 80GB HBM3`` on CUDA; the CPU model on the CPU."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(torch.cuda.current_device())
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {name}".strip()


def device_gpu_profile(name: str) -> str | None:
    """The shipped GPU profile a torch device name resolves to (``NVIDIA H100 80GB HBM3`` -> ``H100-SXM``),
    trying the name and shorter forms of it; None if nothing matches."""
    from profiles.errors import ProfileError
    from profiles.registry import get_gpu

    if name.startswith("CPU"):
        return None
    words = name.replace("NVIDIA", "").replace("GeForce", "").split()
    candidates = [" ".join(words[:n]) for n in range(len(words), 0, -1)]
    candidates += ["-".join(words[:n]) for n in range(len(words), 0, -1)]
    for c in candidates:
        try:
            return get_gpu(c).name
        except ProfileError:
            continue
    return None
