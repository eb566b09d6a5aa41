"""Which torch device a run uses, and whether this CPU can train in bfloat16.

Kept apart from `train` and `eval` so both can import it (train imports eval's generation
code for its learning curves)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import UserError

# CPU instruction-set flags (Linux /proc/cpuinfo spelling) that give native bfloat16 matrix
# products: x86 AVX512-BF16 and AMX-BF16, Arm's BF16 extension. Without them torch emulates
# bf16 matmuls, measured 10-20x slower than fp32 (benchmarks/RESULTS.md).
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")

# what a config's `device` setting means (its --help)
DEVICE_HELP = "where it runs: auto (a GPU when torch sees one, else the CPU), cpu, cuda or cuda:N"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name} was asked for, but this torch build sees no CUDA GPU.")
    return torch.device(name)


def available_memory(device: torch.device) -> int | None:
    """Bytes a new allocation on `device` can still get: the GPU's free memory, or the
    system's MemAvailable (Linux; the physical memory elsewhere); None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            flags.update(value.split())
    return flags


def cpu_bf16_supported() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (so CPU bf16 autocast pays)."""
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in CPU_BF16_FLAGS)
    try:  # no /proc/cpuinfo (macOS, Windows): ask oneDNN (a private torch op; absent in some builds)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
