"""Our own CPU kernels (C++), compiled on first use by the host's C++ compiler and cached.

torch.utils.cpp_extension builds them once per source version into torch's extension cache
(`TORCH_EXTENSIONS_DIR`, by default ~/.cache/torch_extensions; ~10 s, under a file lock when
several processes start at once) with `-march=native`, so they use the host's vector units.
Without a compiler (or with a failing build) `available()` says False and the engine keeps
torch's own kernels; nothing else depends on them. The engine uses them where `faster_here()`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = [HERE / name for name in ("block_linear.cpp", "decode_attention.cpp", "rms_norm.cpp", "silu_mul.cpp")]
# -ffp-contract=off: the compiler may not fuse a multiply and an add on its own, which it might do in one loop
# and not another; the kernels spell out their fused multiply-adds, so every row gets the same instructions.
# The header's digest is a flag so that a changed header rebuilds too (the cache is keyed by sources and flags).
CFLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp",
          f"-DLLMSITE_VECTOR_H={hashlib.sha256((HERE / 'vector.h').read_bytes()).hexdigest()[:16]}"]


@functools.cache
def available() -> bool:
    """Whether torch.ops.llmsite.* exist in this process (building them on first call if need be)."""
    import torch

    if not hasattr(torch, "ops") or "fbgemm" not in torch.backends.quantized.supported_engines:  # x86 CPUs only
        return False
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(name="llmsite_kernels", sources=[str(s) for s in SOURCES], extra_cflags=CFLAGS,
                           extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    except Exception as exc:  # no compiler, no ninja, a failed build: torch's kernels serve instead
        log.warning("our CPU kernels are not available (%s); using torch's", str(exc).splitlines()[0] if str(exc) else exc)
        return False
    return True


@functools.cache
def faster_here() -> bool:
    """Whether the engine should use the kernels on this CPU: where it has AVX-512, which holds their 16-lane vectors
    in one register. Without it the compiler spills those vectors to the stack and a one-stream step took 3.7x as
    long as with AVX-512 on the same machine, slower than torch's kernels; the results are the same bits."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return "avx512f" in flags.split()
