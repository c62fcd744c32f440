"""True float32 on CUDA for the metrics, whatever the caller's TF32 settings."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def float32_precision(tf32: bool = False) -> Iterator[None]:
    """cuBLAS matmuls and cuDNN convolutions on CUDA in TF32 where `tf32`, else in true float32;
    the caller's settings come back on exit.

    Torch's defaults differ (no TF32 for matmuls, TF32 for cuDNN's convolutions), and a TF32
    product is good to ~1e-3, short of the metrics' 1e-4. Set through the `allow_tf32` flags,
    whose setters keep torch's per-operation precisions consistent with them."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


def exact(fn: F) -> F:
    """`fn` run without autograd and in true float32 (`float32_precision`): a metric's entry point."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad(), float32_precision():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
