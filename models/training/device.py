"""Which accelerator to train on: CTR_DEVICE=auto|cpu|cuda."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache


@cache
def cuda_available() -> bool:
    """True when an NVIDIA GPU is visible to this process."""
    if not shutil.which("nvidia-smi"):
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def resolve_device(requested: str = "auto") -> str:
    if requested not in {"auto", "cpu", "cuda"}:
        raise ValueError(f"CTR_DEVICE must be auto, cpu or cuda, not {requested!r}")
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    return requested
