"""Which accelerator to train on: CTR_DEVICE=auto|cpu|cuda, and whether a GPU is visible.

A worker meant for GPUs can land on a machine without one (a node pool misconfigured, a container
started without the NVIDIA runtime, CUDA_VISIBLE_DEVICES emptied). Training then runs on the CPU
rather than failing, and the choice says so: `DeviceChoice.reason` is logged by the training task
and recorded with the model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceChoice:
    """The device a model trains on, what was asked for, and why the two differ or agree."""

    device: str  # "cpu" or "cuda": what the model is actually trained on
    requested: str  # CTR_DEVICE: auto, cpu or cuda
    reason: str

    @property
    def fell_back(self) -> bool:
        """A GPU was asked for by name and none is visible: training runs on the CPU instead."""
        return self.requested == "cuda" and self.device == "cpu"


@cache
def _nvidia_smi() -> tuple[bool, str]:
    """Whether nvidia-smi lists a GPU, with its first line or why not."""
    if not shutil.which("nvidia-smi"):
        return False, "nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"nvidia-smi failed: {exc}"
    first = (out.stdout.strip().splitlines() or [""])[0]
    if out.returncode == 0 and "GPU" in first:
        return True, first
    return False, f"nvidia-smi lists no GPU (exit {out.returncode})"


def gpu_visibility(environ: dict[str, str] | None = None) -> tuple[bool, str]:
    """Whether this process may use an NVIDIA GPU: one is installed (nvidia-smi lists it) and
    CUDA_VISIBLE_DEVICES does not hide it. Returns the answer and what it rests on."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return False, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    return _nvidia_smi()


def cuda_available() -> bool:
    """True when an NVIDIA GPU is visible to this process."""
    return gpu_visibility()[0]


def choose_device(requested: str = "auto", environ: dict[str, str] | None = None) -> DeviceChoice:
    """The device to train on for CTR_DEVICE=`requested`: auto takes the GPU when one is visible;
    cuda without a visible GPU trains on the CPU, and the reason says so."""
    if requested not in DEVICES:
        raise ValueError(f"CTR_DEVICE must be auto, cpu or cuda, not {requested!r}")
    if requested == "cpu":
        return DeviceChoice("cpu", requested, "CTR_DEVICE=cpu")
    visible, why = gpu_visibility(environ)
    if visible:
        return DeviceChoice("cuda", requested, f"CTR_DEVICE={requested}, GPU visible: {why}")
    if requested == "cuda":
        return DeviceChoice(
            "cpu", requested, f"CTR_DEVICE=cuda but no GPU is visible ({why}): training on CPU"
        )
    return DeviceChoice("cpu", requested, f"CTR_DEVICE=auto, no GPU visible ({why})")


def resolve_device(requested: str = "auto") -> str:
    """The device `choose_device` picks, as XGBoost and Keras name it."""
    return choose_device(requested).device
