"""Counting live tensor bytes: torch's dispatcher for predictions, the profiler's allocator events for measurements.

``LiveBytes`` is a ``TorchDispatchMode``: every tensor an aten op returns is looked at through its storage
(``untyped_storage()``, one Python object per storage, so a weak reference fires when the storage is freed). A new
storage adds its bytes to ``live`` and a freed one subtracts them; ``peak`` is the largest ``live`` seen after any
op. It works the same on real, meta and fake tensors (``FakeTensorMode``: shapes and dtypes without memory or
compute), which is how the planner traces a 1.5B-parameter UNet at 25x576x1024 on a laptop. Storages that existed
before (parameters, inputs) are ``known`` and never counted; views and in-place results of them are not new. Two
kinds of new storage are set aside rather than counted as activations:

- ``grads``: a tensor that becomes a parameter's ``.grad`` (a post-accumulate-grad hook moves its bytes there);
- ``param_copies``: what ``_to_copy`` makes of a parameter (autocast's cached bf16 weights under ``*-mixed``),
  a per-model constant rather than a per-sample cost.

``measured_peak_bytes`` is the independent check the tests use: the peak rise of allocated bytes from
``torch.profiler``'s ``profile_memory`` events (the PyTorch CPU allocator's own records), plus the bytes of every
tensor alive at the start. CPU has no ``max_memory_allocated``; on CUDA that is used instead.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def storage_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the storages aten ops create while the mode is active (see the module docstring)."""

    def __init__(self, known: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.grads = 0
        self.param_copies = 0
        self._seen: dict[int, int] = {}  # id(storage object) -> bytes (0: known, not counted)
        self._refs: dict[int, weakref.ref] = {}
        self._params: set[int] = set()
        for t in known:
            self.know(t)

    def know(self, t: torch.Tensor, *, param: bool = False) -> None:
        st = t.untyped_storage()
        self._seen.setdefault(id(st), 0)
        self._refs.setdefault(id(st), weakref.ref(st, self._freed(id(st))))
        if param:
            self._params.add(id(st))

    def know_module(self, module: nn.Module) -> None:
        """Parameters (and their ``_to_copy`` results: ``param_copies``) and buffers of ``module`` are not counted."""
        for p in module.parameters():
            self.know(p, param=True)
        for b in module.buffers():
            self.know(b)

    def _freed(self, key: int) -> Callable[[Any], None]:
        def callback(_: Any) -> None:
            self.live -= self._seen.pop(key, 0)
            self._refs.pop(key, None)

        return callback

    def _track(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key = id(st)
        if key in self._seen and self._refs[key]() is st:
            return
        nbytes = st.nbytes()
        self._seen[key] = nbytes
        self._refs[key] = weakref.ref(st, self._freed(key))
        self.live += nbytes

    def set_aside(self, t: torch.Tensor, kind: str) -> None:
        """Stop counting ``t``'s storage as an activation; add its bytes to ``grads`` or ``param_copies``."""
        key = id(t.untyped_storage())
        nbytes = self._seen.get(key, 0)
        if nbytes:
            self._seen[key] = 0
            self.live -= nbytes
            setattr(self, kind, getattr(self, kind) + nbytes)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        if func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor):
            if id(args[0].untyped_storage()) in self._params:
                self.set_aside(out, "param_copies")
        self.peak = max(self.peak, self.live)
        return out


def grads_set_aside(params: Iterable[nn.Parameter], tracker: LiveBytes) -> list[Any]:
    """Hooks that move each gradient, once accumulated, from the tracked activations to ``tracker.grads``."""
    return [
        p.register_post_accumulate_grad_hook(lambda p: tracker.set_aside(p.grad, "grads"))
        for p in params
        if p.requires_grad
    ]


def live_tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages of ``tensors``."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = storage_bytes(t)
    return sum(seen.values())


def measured_peak_bytes(step: Callable[[], None], *, baseline: int, device: torch.device) -> int:
    """``baseline`` (bytes alive before) + the peak rise of allocated bytes while ``step`` runs: CUDA's
    ``max_memory_allocated``, or on CPU the running sum of ``torch.profiler`` ``profile_memory`` allocation events
    (PyTorch's CPU allocator; oneDNN-internal scratch and allocator slack are not tensors and not included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return baseline + torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = prof.profiler.kineto_results.events()
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in deltas:
        live += nbytes
        peak = max(peak, live)
    return baseline + peak
