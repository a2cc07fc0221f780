"""Which numeric precision a command runs in, and why: the machine's bfloat16 hardware and the policy built on it.

The policy, from the measurements in ``docs/performance.md`` (MobileNetV1 α = 1, batch 128, channels-last):

- a GPU: ``bf16-mixed`` where it supports bfloat16, ``16-mixed`` on older ones;
- a CPU: ``32-true`` by default; ``bf16-mixed`` when asked for. With the 1×1 convolutions computed as matrix
  multiplies (``mobilenet.model.PointwiseConv2d``) and the slow depthwise convolutions in float32
  (``mobilenet.model.DepthwiseConv2d``), ``bf16-mixed`` trains about 1.5x faster than ``32-true`` on a CPU with
  AMX-BF16 and about 1.3x faster on one with AVX512-BF16 alone, to the same accuracy (the 10-epoch recipe). It
  stays opt-in: a default that follows the CPU's flags would change a run's precision when it is resumed on
  another machine;
- ``bf16-mixed`` (or ``bf16-true``) asked for on a CPU with no bfloat16 instructions is refused: PyTorch would
  emulate every bfloat16 operation, many times slower than ``32-true``, for no gain this network needs.
"""

from pathlib import Path
from typing import Optional

import torch

from mobilenet.errors import UsageError

CPUINFO = Path("/proc/cpuinfo")
# What a CPU offers for bfloat16 arithmetic, best first: /proc/cpuinfo flag → how this project names it.
BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
BF16_PRECISIONS = ("bf16-mixed", "bf16-true", "bf16")
# What the CPU default's banner suggests, by whether the CPU has AMX-BF16 (docs/performance.md).
BF16_ADVICE = {
    False: "--trainer.precision bf16-mixed trains about 1.3x faster to the same accuracy",
    True: "--trainer.precision bf16-mixed trains about 1.5x faster to the same accuracy",
}


def cpu_flags(cpuinfo: Path = CPUINFO) -> Optional[set[str]]:
    """The first processor's flags from ``/proc/cpuinfo``; None where the file cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def cpu_bf16(flags: Optional[set[str]] = None) -> Optional[list[str]]:
    """The CPU's bfloat16 instruction sets (e.g. ``["AMX-BF16", "AVX512-BF16"]``), ``[]`` for none, None if unknown."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    return [name for flag, name in BF16_FLAGS.items() if flag in flags]


def uses_cpu(accelerator: object) -> bool:
    """Whether a Trainer with this ``accelerator`` setting runs on the CPU."""
    if accelerator == "cpu":
        return True
    return accelerator in (None, "auto") and not torch.cuda.is_available() and not mps_available()


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def default_precision(accelerator: object) -> str:
    """The precision a command runs in when none is given (the module docstring's policy)."""
    if accelerator in ("auto", "gpu", "cuda", None) and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def choose_precision(
    requested: Optional[object], accelerator: object, bf16: Optional[list[str]] = None
) -> tuple[str, str]:
    """The precision to run in and one line that says why; ``UsageError`` for bfloat16 on a CPU without it.

    ``bf16`` is the CPU's bfloat16 instruction sets as ``cpu_bf16`` gives them (read when not given).
    """
    on_cpu = uses_cpu(accelerator)
    if requested is None:
        precision = default_precision(accelerator)
        if not on_cpu:
            return precision, f"Precision: {precision} (the default on this GPU)."
        bf16 = cpu_bf16() if bf16 is None else bf16
        faster = f"; this CPU has {' and '.join(bf16)}: {BF16_ADVICE['AMX-BF16' in bf16]}" if bf16 else ""
        return precision, f"Precision: {precision} (the default on a CPU{faster}, docs/performance.md)."
    precision = str(requested)
    if not (on_cpu and precision in BF16_PRECISIONS):
        return precision, f"Precision: {precision} (as asked)."
    bf16 = cpu_bf16() if bf16 is None else bf16
    if bf16 == []:
        raise UsageError(
            f"--trainer.precision {precision} was asked for on a CPU without bfloat16 instructions ({cpu_model()} "
            f"has neither AVX512-BF16 nor AMX-BF16). PyTorch would emulate every bfloat16 operation, many times "
            f"slower than 32-bit floats, so nothing was started. Use --trainer.precision 32-true (the CPU default), "
            f"or train on a CPU or GPU with bfloat16 support."
        )
    hardware = " and ".join(bf16) if bf16 else "unknown bfloat16 support"
    policy = "1×1 layers as matrix multiplies, slow depthwise layers in float32"
    return precision, f"Precision: {precision} (as asked; this CPU has {hardware}; {policy})."
