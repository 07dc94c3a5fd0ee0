"""A small, memory-bounded LRU cache of forward passes.

Keyed by (scan content hash, model fingerprint, settings); holds the model-space logits and the
:class:`~napari_vit3d.inference.preprocess.ModelInput` they were computed from, so that an explanation
or a second request on the same scan and model does not run the network again. The cache is bounded
both by entry count and by bytes (tensors counted at their storage size); the least recently used
entry goes first, and an entry bigger than the whole budget is simply not stored.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

DEFAULT_MAX_ENTRIES = 4
DEFAULT_MAX_BYTES = 2 * 1024**3


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o) for o in obj.values())
    if hasattr(obj, "__dict__"):
        return sum(_nbytes(o) for o in vars(obj).values())
    return 0


class ForwardCache:
    """Thread-safe LRU mapping ``key → value`` bounded by entries and bytes."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any) -> bool:
        """Store ``value``; returns False when it alone exceeds the byte budget (not stored)."""
        size = _nbytes(value)
        with self._lock:
            self._items.pop(key, None)
            if size > self.max_bytes or self.max_entries <= 0:
                return False
            self._items[key] = (value, size)
            while len(self._items) > self.max_entries or self.nbytes > self.max_bytes:
                self._items.popitem(last=False)
            return True

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_CACHE = ForwardCache()


def forward_cache() -> ForwardCache:
    """The process-wide forward-pass cache used by :func:`napari_vit3d.inference.segment`."""
    return _CACHE


_FINGERPRINTS: weakref.WeakKeyDictionary[torch.nn.Module, tuple] = weakref.WeakKeyDictionary()


def _tensor_state(network: torch.nn.Module) -> tuple:
    """Cheap identity of every tensor's storage and in-place version counter."""
    return tuple((name, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype), str(t.device))
                 for name, t in network.state_dict(keep_vars=True).items())


def network_fingerprint(network: torch.nn.Module) -> str:
    """sha256 over a network's parameters and buffers (names, dtypes, shapes, values).

    Computed from the live tensors, so weights changed in place (fine-tuning, ``load_state_dict``) give a
    new fingerprint. The hash is remembered per network together with every tensor's storage pointer and
    in-place version counter, so asking again for an unchanged network costs no hashing.
    """
    state = _tensor_state(network)
    known = _FINGERPRINTS.get(network)
    if known is not None and known[0] == state:
        return known[1]
    digest = _hash_network(network)
    _FINGERPRINTS[network] = (state, digest)
    return digest


def _hash_network(network: torch.nn.Module) -> str:
    h = hashlib.sha256()
    h.update(type(network).__qualname__.encode())
    h.update(repr(network).encode())  # configuration too: two parameter-free networks can differ
    for name, t in network.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()


__all__ = ["ForwardCache", "forward_cache", "network_fingerprint"]
