"""Counting the tensor memory a computation holds at once (pytest puts this folder on sys.path)."""

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """The most bytes of CPU tensor storage alive at once among those made while it is on:
    every op's outputs are counted until their storage is freed (checked after each op)."""

    def __init__(self):
        super().__init__()
        self.alive: dict[tuple[int, int], StorageWeakRef] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, ref in self.alive.items() if ref.expired()]:
            self.now -= key[1]
            del self.alive[key]
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
                if key[1] and key not in self.alive:
                    self.alive[key] = StorageWeakRef(storage)
                    self.now += key[1]
        self.peak = max(self.peak, self.now)
        return out
