"""Where and how to compute: the device, and the CPU abilities that choose precision and encoder.

Device resolution, AMX, VNNI and native bf16 detection (which choose the precision of training and the encoder of
inference), with one override, ``WHISPER_FT_CPU=avx2``, that takes the AVX2-only choices on any machine."""

from __future__ import annotations

import dataclasses
import logging
import os
import re

logger = logging.getLogger(__name__)

CPU_PROFILE_ENV = "WHISPER_FT_CPU"  # "avx2": take the choices made for CPUs without AMX or AVX-512-BF16


def avx2_profile() -> bool:
    """Whether ``WHISPER_FT_CPU=avx2`` asks for the choices of an AVX2-only CPU (most laptops) on any CPU: to
    measure or test that path on an AMX machine (with ``ONEDNN_MAX_CPU_ISA=AVX2 CT2_FORCE_CPU_ISA=AVX2``)."""
    value = os.environ.get(CPU_PROFILE_ENV, "").strip().lower()
    if value not in ("", "avx2", "native"):
        raise ValueError(f"{CPU_PROFILE_ENV}={value!r}: use avx2 (AVX2-only choices) or native (this CPU's)")
    return value == "avx2"


def cpu_flags() -> list[str]:
    """This CPU's vector-extension flags (``lscpu``'s avx*/amx*/fma), to report next to every speed figure."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))


def cpu_model() -> str:
    """This CPU's model name (``lscpu``'s "Model name"), or "" where /proc/cpuinfo does not tell."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line for line in f if line.startswith("model name")).split(":", 1)[1].strip()
    except (OSError, StopIteration, IndexError):
        return ""


ISA_ENV = (CPU_PROFILE_ENV, "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "CT2_FORCE_CPU_ISA")


def isa_env() -> dict[str, str]:
    """The instruction-set overrides set in this process's environment (the AVX2 profile's variables), to report
    next to every speed figure with :func:`cpu_flags`."""
    return {k: os.environ[k] for k in ISA_ENV if k in os.environ}


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matrix products several times faster than fp32 or int8);
    False under ``WHISPER_FT_CPU=avx2``. Read from /proc/cpuinfo (the kernel lists ``amx_tile`` only when it
    enables AMX), so the ct2 path does not import PyTorch (1.7 s) to ask; elsewhere PyTorch is asked."""
    if avx2_profile():
        return False
    flags = cpu_flags()
    if flags:
        return "amx_tile" in flags
    import torch

    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check()) if check is not None else False


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI int8 dot products (AVX-512-VNNI or AVX-VNNI): onnxruntime's uint8 × int8 matrix
    products then add four products at a time straight into int32; without VNNI they add product pairs in int16 first,
    which can saturate. False under ``WHISPER_FT_CPU=avx2`` and where /proc/cpuinfo cannot be read."""
    if avx2_profile():
        return False
    flags = cpu_flags()
    return "avx512_vnni" in flags or "avx_vnni" in flags


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 math (AVX-512-BF16 or AMX); False under ``WHISPER_FT_CPU=avx2``."""
    import torch

    if avx2_profile():
        return False
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return cpu_has_amx() or (bool(check()) if check is not None else False)


def resolve_device(device: str = "auto") -> str:
    """``auto`` → cuda, then mps, then cpu; anything else is returned unchanged."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(device: str, backend: str = "transformers") -> str:
    """``device`` (a ``--device`` value) as given, when this machine can run ``backend`` on it ("transformers":
    PyTorch; "ct2": CTranslate2, which runs ``mps`` on the CPU with a warning).

    Raises:
        ValueError: an unknown device name, or a GPU the engine does not see here (the message says why and the fix).
    """
    if not _DEVICE.fullmatch(device):
        raise ValueError(f"--device={device}: unknown device; use auto, cpu, cuda, cuda:N (the N-th GPU) or mps")
    kind, _, index = device.partition(":")
    if kind == "cuda":
        if backend == "ct2":
            import ctranslate2

            count, engine = ctranslate2.get_cuda_device_count(), f"CTranslate2 {ctranslate2.__version__}"
        else:
            import torch

            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            engine = f"PyTorch {torch.__version__}" + (", a build without CUDA," if torch.version.cuda is None else "")
        if count <= int(index or 0):
            raise ValueError(f"--device={device}: {engine} sees {count} CUDA GPU(s) on this machine; use --device=cpu, "
                             "or auto (a GPU where there is one)")
    elif kind == "mps" and backend != "ct2":
        import torch

        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ValueError("--device=mps: PyTorch sees no Apple GPU (MPS) on this machine; use --device=cpu or auto")
    return device


def resolve_ct2_device(device: str = "auto") -> str:
    """:func:`resolve_device` for CTranslate2, asked by CTranslate2 itself (no PyTorch import): ``auto`` → cuda
    when CTranslate2 sees a CUDA device, else cpu."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


@dataclasses.dataclass(frozen=True)
class Precision:
    """How a run computes: accelerate's ``mixed_precision`` and the dtype of the frozen base weights.

    On a CPU, bf16 keeps the frozen base weights in bf16 (no autocast, so no per-op casts) while the
    LoRA weights, their gradients and the optimizer stay fp32, and the loss is computed in fp32.
    """

    mixed_precision: str  # "no", "bf16", "fp16"
    base_dtype: str  # "float32" or "bfloat16"

    def describe(self) -> str:
        if self.base_dtype == "bfloat16":
            return "bf16 base weights, fp32 adapters"
        return {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.mixed_precision]


def cuda_has_bf16(device: int | None = None) -> bool:
    """Whether the CUDA GPU computes in bf16 natively: compute capability 8.0 (Ampere) or later. PyTorch's
    ``torch.cuda.is_bf16_supported()`` also says yes for emulated bf16 (T4, V100: slow), so ``--precision=auto``
    chose bf16 there instead of fp16. Reads the device's properties only (no tensor, no memory on GPU 0).
    ``device``: None = this process's GPU: under torchrun / accelerate launch the one of its ``LOCAL_RANK`` (asked
    before the launcher's device is set, when ``current_device()`` is still GPU 0, another card on a mixed box)."""
    import torch

    if device is not None:
        index = device
    elif os.environ.get("LOCAL_RANK", "").isdigit():
        index = int(os.environ["LOCAL_RANK"]) % max(torch.cuda.device_count(), 1)
    else:
        index = torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).major >= 8


def choose_precision(requested: str, fp16: bool, device_type: str) -> Precision:
    """The precision for the request and device.

    auto: bf16 (else fp16) autocast on CUDA; on a CPU bf16 base weights where AMX makes them fast
    (whisper-base decoder-only LoRA on our 2-core AMX CPU: tools/bench_finetune.py), else fp32. AVX-512-BF16
    without AMX stays fp32: there bf16 trained 1.2-1.9x faster but the demo's CER came out 0.01 higher (2-core AMD
    EPYC, finetune.py's default LoRA; the README's Speed section), so it is ``--precision=bf16`` on request.
    """
    cuda = device_type == "cuda"
    cuda_bf16 = cuda and cuda_has_bf16()
    if fp16 or requested == "fp16":
        if cuda:
            return Precision("fp16", "float32")
        logger.warning("fp16 mixed precision needs a CUDA GPU; on %s using %s instead",
                       device_type, "bf16 base weights" if cpu_has_amx() else "fp32")
        requested = "auto"
    if requested == "fp32":
        return Precision("no", "float32")
    if requested == "bf16":
        if cuda and not cuda_bf16:
            logger.warning("this GPU has no bf16; using fp16")
            return Precision("fp16", "float32")
        if cuda:
            return Precision("bf16", "float32")
        if not cpu_supports_bf16():
            logger.warning("this CPU has no native bf16 (AVX-512-BF16/AMX): bf16 will be slow; --precision=fp32")
        return Precision("no", "bfloat16")
    if cuda:
        return Precision("bf16" if cuda_bf16 else "fp16", "float32")
    return Precision("no", "bfloat16" if cpu_has_amx() else "float32")
