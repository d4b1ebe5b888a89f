"""The device contract of :mod:`omnizip`, and the tool that checks it and counts host syncs.

Contract
--------
* **A layout lives on one device**: every tensor of a :class:`~omnizip.types.TokenLayout` (``embeds``,
  ``modality``, ``chunk_id``, ``frame_id``, ``audio_saliency``, ``positions``) is on ``embeds.device``
  (validated on construction; :meth:`~omnizip.types.TokenLayout.to` moves a whole layout). The adapters
  build it there: the token order and TMRoPE ids are planned on the host (``adapters/tmrope.py``) and
  moved to the model's device once per window.
* **Everything is computed on the inputs' device and returned there**, float results (scores, weights,
  merged rows) and index results alike: a :class:`~omnizip.types.KeepPlan` (``keep``, ``merge_*``,
  the per-chunk ratios) lives on its layout's device. Index tensors are *not* kept on the CPU, so
  the engine never moves a plan.
* **No placement by default**: every tensor factory inside ``omnizip/`` names its ``device`` (taken
  from an input tensor) or is a ``*_like`` of an input. Two deliberate host-side steps, both explicit:
  the ``random`` baseline draws its permutations with a seeded CPU generator (so a seed gives the
  same plan on every device) and moves each draw to the layout's device; and host metadata that is
  read into Python anyway (``video_grid_thw``) is made with ``device="cpu"``.
* **Host syncs** (``.item()``, ``int()``/``float()``/``bool()`` of a tensor, ``.tolist()``, and ops
  whose output size depends on the data: ``nonzero``, boolean-mask indexing, ``unique``,
  ``bincount``; plus host-to-device copies of Python lists) wait for the GPU. They are allowed for
  per-chunk and per-frame bookkeeping (Python ints are cheaper than tiny kernels at a window's
  size), never inside a per-token loop, and are counted per window with :class:`DeviceAudit`
  (``scripts/bench_compress.py`` reports the count: about 20 per streaming window and 21 per
  3-window offline clip at 7B sizes; ``tests/omnizip/test_device_contract.py`` bounds them).

Checking it without a GPU
-------------------------
:class:`DeviceAudit` is a ``TorchFunctionMode``. With ``simulate="cuda"`` the tensors passed through
:meth:`DeviceAudit.place` *pretend* to live on that device: their data stay on the CPU, but
``t.device`` reports ``cuda:0``, factories called with that device and ``.to(that device)`` produce
tensors that pretend too, and the pretence propagates through every op. A tensor made without a
device (really on the CPU) that meets a pretending tensor in one op is a mixed-device error, exactly
where CUDA would raise. In ``strict`` mode the audit also raises on any factory called from a file of
``omnizip/`` without ``device=``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

PACKAGE_DIR = str(Path(__file__).resolve().parent)
_TORCH_DIR = str(Path(torch.__file__).resolve().parent) + os.sep
_THIS_FILE = str(Path(__file__).resolve())
_TAG = "_omnizip_simulated_device"

#: Tensor factories: inside ``omnizip/`` each must be called with ``device=``.
FACTORIES = frozenset({
    "zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "eye", "linspace", "logspace",
    "rand", "randn", "randint", "randperm", "empty_strided", "scalar_tensor", "range",
})
#: Reading a value on the host.
_EXPLICIT_SYNCS = frozenset({"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"})
#: Ops whose output size depends on the data (the host waits for the count).
_DATA_DEPENDENT = frozenset({
    "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select", "bincount", "repeat_interleave",
})
_INDEXING = frozenset({"__getitem__", "__setitem__", "index_put", "index_put_"})
_DEVICE_GET = torch.Tensor.device.__get__


class DeviceContractError(RuntimeError):
    """A tensor factory without a device inside ``omnizip/``, or one op mixing devices."""


@dataclass
class SyncCounts:
    """Host syncs seen by a :class:`DeviceAudit` (only tensors on an accelerator count).

    Attributes:
        explicit: ``.item()``, ``.tolist()``, ``int/float/bool(tensor)``, ``.numpy()``, device-to-host copies.
        implicit: data-dependent output sizes (``nonzero``, boolean-mask indexing, ``unique``,
            ``bincount``, ``repeat_interleave``) and host-to-device copies of Python data.
        sites: ``"file:line"`` of each sync, counted (paths relative to the repository).
    """

    explicit: int = 0
    implicit: int = 0
    sites: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """All syncs."""
        return self.explicit + self.implicit


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """The tensors in ``obj`` (nested lists, tuples and dicts)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


@functools.lru_cache(maxsize=4096)
def _real(path: str) -> str:
    """``path`` with symlinks resolved (a virtualenv may be a symlink)."""
    return os.path.realpath(path)


def _simulated(t: torch.Tensor) -> bool:
    return bool(t.__dict__.get(_TAG, False))


class DeviceAudit(TorchFunctionMode):
    """Check the device contract and count host syncs while ``omnizip`` code runs.

    Args:
        simulate: a device (``"cuda"``) that tensors given to :meth:`place` pretend to live on, or
            ``None`` to look at the real devices only (e.g. counting syncs on a real GPU).
        strict: raise :class:`DeviceContractError` on the first violation instead of recording it in
            :attr:`violations`.
        package_dir: the directory whose factory calls must name a device (``omnizip/``).
    """

    def __init__(self, *, simulate: str | torch.device | None = None, strict: bool = False,
                 package_dir: str = PACKAGE_DIR) -> None:
        super().__init__()
        self.device = None if simulate is None else torch.device(simulate)
        if self.device is not None and self.device.type == "cpu":
            raise ValueError("simulate a non-CPU device (e.g. 'cuda')")
        if self.device is not None and self.device.index is None and self.device.type == "cuda":
            self.device = torch.device("cuda", 0)
        self.strict = strict
        self.package_dir = package_dir
        self.violations: list[str] = []
        self.syncs = SyncCounts()

    # ------------------------------------------------------------------ placement
    def place(self, t: torch.Tensor) -> torch.Tensor:
        """An alias of ``t`` that pretends to live on the simulated device (needs ``simulate``)."""
        if self.device is None:
            raise ValueError("place() needs a simulated device")
        alias = t.view(t.shape)
        alias.__dict__[_TAG] = True
        return alias

    def device_of(self, t: torch.Tensor) -> torch.device:
        """The device ``t`` lives on (the simulated one for pretending tensors)."""
        if _simulated(t) and self.device is not None:
            return self.device
        return torch.device(t.device.type, t.device.index) if t.device.index is not None else t.device

    def _is_sim(self, dev: Any) -> bool:
        if self.device is None or not isinstance(dev, (str, torch.device)):
            return False
        try:
            d = torch.device(dev)
        except RuntimeError:
            return False
        return d.type == self.device.type

    def _on_accelerator(self, t: torch.Tensor) -> bool:
        return self.device_of(t).type != "cpu"

    # ------------------------------------------------------------------ reporting
    def _caller(self) -> str:
        """``file:line`` of the first frame outside torch and this module."""
        frame = sys._getframe(2)
        while frame is not None:
            name = _real(frame.f_code.co_filename)
            if not (name.startswith(_TORCH_DIR) or name == _THIS_FILE):
                return f"{name}:{frame.f_lineno}"
            frame = frame.f_back  # type: ignore[assignment]
        return "?"

    def _violate(self, message: str) -> None:
        self.violations.append(message)
        if self.strict:
            raise DeviceContractError(message)

    def _sync(self, kind: str) -> None:
        if kind == "explicit":
            self.syncs.explicit += 1
        else:
            self.syncs.implicit += 1
        site = self._caller()
        root = str(Path(self.package_dir).parent) + "/"
        self.syncs.sites[site[len(root):] if site.startswith(root) else site] += 1

    # ------------------------------------------------------------------ the mode
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        if func == _DEVICE_GET:
            return self.device_of(args[0])
        name = getattr(func, "__name__", "")
        inputs = list(_tensors((args, kwargs)))
        if name in FACTORIES:
            caller = self._caller()
            if "device" not in kwargs and caller.startswith(self.package_dir):
                self._violate(f"torch.{name} without device= at {caller}")
        # Where the output goes, as the code sees it (None: where its inputs are).
        dest: torch.device | None = None
        if isinstance(kwargs.get("device"), (str, torch.device, int)):
            dest = self._as_device(kwargs["device"])
            if self._is_sim(kwargs["device"]):
                kwargs["device"] = "cpu"
            if dest.type != "cpu" and name in ("tensor", "as_tensor") and not isinstance(
                args[0] if args else None, torch.Tensor
            ):
                self._sync("implicit")  # Python data copied to the device
        if name == "to":
            new_args = list(args)
            for i, a in enumerate(args[1:], start=1):
                if isinstance(a, (str, torch.device)):
                    dest = self._as_device(a)
                    if self._is_sim(a):
                        new_args[i] = "cpu"
                elif isinstance(a, torch.Tensor):
                    dest = self.device_of(a)
            args = tuple(new_args)
        elif name == "cuda" and self.device is not None:
            return self._tag(args[0].view(args[0].shape), True)
        elif name == "cpu":
            dest = torch.device("cpu")
        self._check_mixed(name, inputs)
        self._count(name, args, kwargs, inputs, dest)
        out = func(*args, **kwargs)
        if self.device is None:
            return out
        simulated = any(_simulated(t) for t in inputs) if dest is None else dest == self.device
        return self._tag_all(out, simulated, inputs)

    def _as_device(self, dev: str | torch.device | int) -> torch.device:
        """``dev`` as a device (the simulated one, with its index, when it names that type)."""
        if self._is_sim(dev):
            assert self.device is not None
            return self.device
        return torch.device(dev)

    def _check_mixed(self, name: str, inputs: list[torch.Tensor]) -> None:
        devices = {
            str(self.device_of(t)) for t in inputs
            # a 0-dim CPU tensor is a scalar to torch, allowed next to any device
            if not (t.dim() == 0 and self.device_of(t).type == "cpu")
        }
        if len(devices) > 1:
            self._violate(f"{name} mixes devices {sorted(devices)} at {self._caller()}")

    def _count(self, name: str, args: Any, kwargs: dict[str, Any], inputs: list[torch.Tensor],
               dest: torch.device | None) -> None:
        if not inputs:
            return
        first = inputs[0]
        on_acc = self._on_accelerator(first)
        if name in _EXPLICIT_SYNCS and on_acc:
            self._sync("explicit")
        elif name in ("cpu", "to") and on_acc and dest is not None and dest.type == "cpu":
            self._sync("explicit")  # device-to-host copy
        elif name == "to" and not on_acc and dest is not None and dest.type != "cpu":
            self._sync("implicit")  # host-to-device copy
        elif name in _DATA_DEPENDENT and on_acc:
            if not (name == "repeat_interleave" and "output_size" in kwargs):
                self._sync("implicit")
        elif name == "where" and len(args) == 1 and on_acc:
            self._sync("implicit")
        elif name in _INDEXING and on_acc:
            index = args[1] if len(args) > 1 else None
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool and p.dim() > 0 for p in parts) or any(
                isinstance(p, list) for p in parts
            ):
                self._sync("implicit")

    def _tag(self, t: torch.Tensor, value: bool) -> torch.Tensor:
        if value:
            t.__dict__[_TAG] = True
        else:
            t.__dict__.pop(_TAG, None)
        return t

    def _tag_all(self, out: Any, value: bool, inputs: list[torch.Tensor]) -> Any:
        if isinstance(out, torch.Tensor):
            if any(out is t for t in inputs) and _simulated(out) != value:
                out = out.view(out.shape)  # a no-op .to()/.cpu() returned its input: tag an alias
            return self._tag(out, value)
        if isinstance(out, tuple) and hasattr(out, "_fields") or type(out).__module__ == "torch.return_types":
            for t in out:
                if isinstance(t, torch.Tensor):
                    self._tag(t, value)
            return out
        if isinstance(out, (list, tuple)):
            return type(out)(self._tag_all(o, value, inputs) for o in out)
        return out
