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


def _newer_flags() -> list[tuple[Any, bool]]:
    """torch ≥ 2.9's per-operation `fp32_precision` flags (none before), each with whether it
    follows `tf32`: cuBLAS and cuDNN do; oneDNN (CPUs) is always true float32 here."""
    backends = torch.backends
    if not hasattr(backends.cuda.matmul, "fp32_precision"):
        return []
    flags = [(backends.cuda.matmul, True), (backends.cudnn.conv, True), (backends.cudnn.rnn, True)]
    onednn = [getattr(backends.mkldnn, op, None) for op in ("matmul", "conv", "rnn")]
    return flags + [(op, False) for op in onednn if hasattr(op, "fp32_precision")]


@contextlib.contextmanager
def float32_precision(tf32: bool = False) -> Iterator[None]:
    """cuBLAS matmuls and cuDNN convolutions on CUDA in TF32 where `tf32`, else in true float32,
    and oneDNN's (CPUs) in true float32; the caller's settings, legacy and newer, come back on
    exit (per process, not per thread).

    Torch's defaults differ (no TF32 for matmuls, TF32 for cuDNN's convolutions), and a TF32
    product is good to ~1e-3, short of the metrics' 1e-4. Set through the legacy `allow_tf32`
    flags, and on torch ≥ 2.9 each per-operation `fp32_precision` flag too (the legacy setters
    leave cuDNN's at "none", which inherits a caller's `torch.backends.fp32_precision`); torch
    refuses to run a matmul under a legacy and a newer flag that disagree, so they agree inside."""
    backends = torch.backends
    newer = [(flags, follows, flags.fp32_precision) for flags, follows in _newer_flags()]
    matmul, cudnn = _read(torch.get_float32_matmul_precision), _read(lambda: backends.cudnn.allow_tf32)
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = tf32
    for flags, follows, _ in newer:
        flags.fp32_precision = "tf32" if tf32 and follows else "ieee"
    try:
        yield
    finally:
        if matmul is not None:
            torch.set_float32_matmul_precision(matmul)
        if cudnn is not None:
            backends.cudnn.allow_tf32 = cudnn
        for flags, _, value in newer:
            flags.fp32_precision = value


def exact(fn: F) -> F:
    """`fn` run without autograd and in true float32 (`float32_precision`): a metric's entry point."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad(), float32_precision():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
