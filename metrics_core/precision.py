"""True float32 on CUDA for the metrics, whatever the caller's TF32 settings."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def _read(getter: Callable[[], Any]) -> Any:
    """A legacy TF32 setting, or None where torch refuses to read it (a caller set the newer
    `fp32_precision` flags, and torch will not read a mix of the two)."""
    try:
        return getter()
    except RuntimeError:
        return None


@contextlib.contextmanager
def float32_precision(tf32: bool = False) -> Iterator[None]:
    """cuBLAS matmuls and cuDNN convolutions on CUDA in TF32 where `tf32`, else in true float32;
    the caller's settings, legacy and newer, come back on exit (per process, not per thread).

    Torch's defaults differ (no TF32 for matmuls, TF32 for cuDNN's convolutions), and a TF32
    product is good to ~1e-3, short of the metrics' 1e-4. Set through the legacy `allow_tf32`
    flags, whose setters also set torch ≥ 2.9's per-operation `fp32_precision` flags, so the two
    agree inside (torch refuses to run a matmul under a mix of them)."""
    backends = torch.backends
    newer = ([(backends.cuda.matmul, backends.cuda.matmul.fp32_precision),
              (backends.cudnn.conv, backends.cudnn.conv.fp32_precision),
              (backends.cudnn.rnn, backends.cudnn.rnn.fp32_precision)]
             if hasattr(backends.cuda.matmul, "fp32_precision") else [])
    matmul, cudnn = _read(torch.get_float32_matmul_precision), _read(lambda: backends.cudnn.allow_tf32)
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        if matmul is not None:
            torch.set_float32_matmul_precision(matmul)
        if cudnn is not None:
            backends.cudnn.allow_tf32 = cudnn
        for flags, value in newer:
            flags.fp32_precision = value


def exact(fn: F) -> F:
    """`fn` run without autograd and in true float32 (`float32_precision`): a metric's entry point."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad(), float32_precision():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
