"""What the device of a training process supports and runs fastest: native bfloat16, a fused AdamW."""

from __future__ import annotations

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def process_device() -> torch.device:
    """The device accelerate gives this process, before any `Accelerator` exists (the process state it sets up,
    with `accelerate launch --cpu` / `ACCELERATE_USE_CPU` honoured as `Accelerator` does, is the one it reuses)."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device


def fused_adamw_kwargs(device: torch.device | str) -> dict[str, bool]:
    """`{"fused": True}` where PyTorch has a fused AdamW for `device` (CUDA; CPU from torch 2.4), else `{}`.

    One kernel over all parameters instead of a chain of per-tensor ones: on CPU, an AdamW step of UperNet-128 on
    EfficientNet-Lite0 (182 tensors, 5.1M values) takes 7 ms instead of 21 ms (`bench/step_cost.py`, issue 10).
    """
    device_type = torch.device(device).type
    cpu_fused = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 4)
    return {"fused": True} if device_type == "cuda" or (device_type == "cpu" and cpu_fused) else {}


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or AMX.

    Elsewhere bf16 autocast is emulated and slow: on a 2-core AMD EPYC with AVX2 only, a maskmatch training step
    (UperNet-128, batch 4 + 4) took 17.2 s in bf16 against 1.71 s in float32 (`bench/step_cost.py`, 2 threads).
    Other accelerators count as not native (`--mixed_precision auto` then trains in float32).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # Private probes of PyTorch's CPU dispatcher (the ones its own bf16 kernels select on).
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_mixed_precision(requested: str | None, device: torch.device | str) -> str | None:
    """`--mixed_precision` as accelerate takes it: `auto` is `bf16` where [`native_bf16`], else `no`; any other
    value (None: the accelerate config's) is passed on as it is."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "no"
    return requested
