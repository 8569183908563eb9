"""Optional fused C++ CPU kernel for SPLASH, compiled on first use (``load_inline``)
from ``csrc/splash.cpp``, shipped as package data.

Why: the eager fused path (:class:`robustact.nn.splash._SplashFunction`) needs about ten
element-wise passes and several activation-sized temporaries (index, gathers, products,
scatter-adds, int casts) per forward + backward; on CPU that made a ResNet-20 step ~1.35× the
ReLU step. This kernel does the forward in one loop (interval index, ``y = c[j] + m[j]·x``) and
the backward in one loop (``dx = m[j]·g`` and the per-interval sums of ``g·x`` and ``g``), with no
temporaries beyond the outputs, so SPLASH costs about what ReLU costs.

It is an accelerator, not a definition: the eager path stays the reference and the fallback.
Nothing is compiled at import. :func:`load` builds the extension once per process (the build
is cached on disk by PyTorch in its extensions directory, ``TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``, so later processes only load it) and remembers a failure, so a
machine without a compiler or ninja pays for one failed attempt and then runs eager.

Numerics, by construction identical to the eager path except for summation order:

* interval index ``j = trunc(clamp(k + x·(−1/Δ), 0, 2K−1))`` with the product and the sum
  rounded separately (compiled with ``-ffp-contract=off``; the eager path does a ``mul`` then an
  ``add_``), NaN → 0 before the clamp, channel offset added as an integer afterwards;
* ``y = c[j] + m[j]·x`` and ``dx = m[j]·g`` rounded as the eager ``addcmul``/``mul`` do, so
  values and input gradients are bitwise equal;
* per-interval sums: in the input dtype over at most 128 terms per vector lane, then in float64
  per fixed chunk of 32768 elements, chunks summed in a fixed order: deterministic for any
  thread count, and more accurate than the float32 eager sums (so they agree to rounding, not
  bitwise).

Speed comes from a vectorised loop (ATen's ``Vectorized``, AVX2, on x86 CPUs where PyTorch
itself uses AVX2 or AVX-512) specialised for 2K = 4, 6, 8 intervals (S = 3, 5, 7): the table
look-up is a compare-and-blend chain (no gathers) and the per-interval sums are masked adds
into 2K vector accumulators. Other S and other CPUs use a scalar loop (measured here: ResNet-20
step 1.17× ReLU's with the scalar loop, 1.08× with the vector one).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import warnings
from importlib import resources
from types import ModuleType

import torch

__all__ = ["load", "load_error", "toolchain_available", "supports", "source"]

_SUPPORTED_DTYPES = (torch.float32, torch.float64)
_log = logging.getLogger(__name__)

_lock = threading.Lock()
# The one piece of module state: the built extension, or the error that building it raised
# (remembered so that a machine without a toolchain tries once per process, not per call).
_cache: dict[str, ModuleType | BaseException] = {}


def _compiler() -> str:
    """The C++ compiler PyTorch's extension builder will invoke (``CXX``, else ``c++``/``cl``)."""
    return os.environ.get("CXX", "cl" if sys.platform == "win32" else "c++")


def toolchain_available() -> bool:
    """True when a C++ compiler and ninja are on PATH (needed to build; not to load a build)."""
    from torch.utils.cpp_extension import is_ninja_available  # lazy: setuptools, build only

    return shutil.which(_compiler()) is not None and is_ninja_available()


def _flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags). ``-ffp-contract=off`` is what makes the index computation
    match the eager path bit for bit (no fused multiply-add); the ISA flags follow the level
    PyTorch itself dispatches to on this CPU (it is part of the build name, so a shared cache
    never hands one CPU a build for another); OpenMP lets ``at::parallel_for`` use PyTorch's
    threads (GCC on Linux, where the wheel's libgomp is the one loaded)."""
    if sys.platform == "win32":
        return ["/O2", "/fp:precise"], []
    cflags = ["-O3", "-ffp-contract=off"]
    ldflags: list[str] = []
    cap = torch.backends.cpu.get_cpu_capability()
    if cap in ("AVX2", "AVX512"):
        # ATen's Vectorized<T> picks its AVX2 implementation from these macros. AVX2 also on
        # AVX-512 machines: measured no faster there (AMD Zen 4) and 16 registers suffice.
        cflags += ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    if sys.platform.startswith("linux"):
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags


def source() -> str:
    """The kernel's C++ source, ``robustact/nn/csrc/splash.cpp``, shipped as package data.

    Read through :mod:`importlib.resources` so it is found the same way from a source tree, an
    editable install and a wheel; read only when a build is attempted, never at import.
    """
    return resources.files("robustact.nn").joinpath("csrc", "splash.cpp").read_text("utf-8")


def _build() -> ModuleType:
    from torch.utils.cpp_extension import load_inline  # lazy: setuptools, build only

    cflags, ldflags = _flags()
    cap = torch.backends.cpu.get_cpu_capability().lower()
    return load_inline(
        name=f"robustact_splash_{cap}",
        cpp_sources=[source()],
        functions=["splash_forward", "splash_backward"],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        verbose=False,
    )


def load() -> ModuleType | None:
    """The compiled extension, building it on the first call; None if that failed.

    Thread-safe; PyTorch's builder also locks the build directory across processes. A failure
    is reported once, as a :class:`RuntimeWarning`, because it silently costs speed (the eager
    path is ~4× slower per SPLASH layer, a ResNet-20 step ~1.35× ReLU's instead of ~1.08×);
    the layer option ``kernel="eager"`` (spec ``splash:kernel=eager``) avoids the attempt.
    """
    with _lock:
        if "ext" not in _cache:
            _log.info("building the SPLASH C++ kernel (once; cached in the torch extensions dir)")
            try:
                _cache["ext"] = _build()
            except Exception as e:  # any build or load failure means "use eager"
                _cache["ext"] = e
                warnings.warn(
                    f"robustact: could not build the SPLASH C++ kernel, using the slower eager "
                    f"path ({type(e).__name__}: {str(e).strip()[:300]}). Use the activation "
                    f"spec 'splash:kernel=eager' to skip this attempt.",
                    RuntimeWarning, stacklevel=3)
        ext = _cache["ext"]
    return ext if isinstance(ext, ModuleType) else None


def load_error() -> BaseException | None:
    """Why :func:`load` failed (None if it has not been tried or succeeded)."""
    ext = _cache.get("ext")
    return ext if isinstance(ext, BaseException) else None


def supports(x: torch.Tensor) -> bool:
    """Whether the kernel handles this input at all: CPU float32/float64 (checked before
    :func:`load`, so unsupported inputs never trigger a build)."""
    return x.device.type == "cpu" and x.dtype in _SUPPORTED_DTYPES and not x.is_sparse
