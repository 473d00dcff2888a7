"""Where the model runs and in which precision.

``auto`` picks CUDA when torch sees a CUDA device, else Apple's MPS, else the CPU. Checkpoints
are always read onto the CPU (``map_location``) and moved afterwards, so a model trained on a
GPU loads on a laptop and the other way round.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from deepvibe.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto|cpu|cuda|mps`` (or ``cuda:1``) -> a torch.device that exists on this machine."""
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise ConfigError(f"train.device: expected one of {', '.join(DEVICES)}, got {name!r}")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device is {name} but torch sees no CUDA device (torch "
            f"{torch.__version__}); use --device cpu or auto, or install a CUDA build of torch"
        )
    if kind == "mps" and not _mps_available():
        raise ConfigError(
            f"train.device is {name} but MPS (Apple GPU) is not available; use --device cpu or auto"
        )
    return torch.device(name)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU of compute
    capability 8.0 or newer, or a CPU with AVX512-BF16 or AMX. Elsewhere autocast emulates bf16
    and is slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto|fp32|bf16`` -> ``fp32`` or ``bf16``. ``auto`` is bf16 where the device has native
    bf16 (Last.fm-2k quality was unchanged, docs/BENCHMARKS.md), else fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"train.precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``bf16``: matrix products in bfloat16 under torch.autocast (weights stay float32);
    ``fp32``: a no-op; ``auto``: as :func:`resolve_precision` decides for ``device``."""
    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
