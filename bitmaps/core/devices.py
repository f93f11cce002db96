"""Which devices this machine has: the one check behind every ``--device`` option.

``auto`` picks CUDA where torch sees a GPU, else the CPU; ``cpu`` is always there; ``cuda`` only
where torch was built with CUDA and sees a GPU. Anything else is refused with a reason, never
ignored.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot be used on this machine, or None."""
    if device not in DEVICES:
        return f"{device!r} is not a device: use {', '.join(DEVICES)}"
    if device == "cuda" and not torch.cuda.is_available():
        return "cuda: torch sees no CUDA GPU on this machine"
    return None


def torch_device(device: str) -> torch.device:
    """The torch device for an ``--device`` value: ``auto`` is CUDA where torch sees a GPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
