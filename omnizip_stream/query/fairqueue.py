"""Fair queueing of the MQTT server's questions, and the queue that outlives an MQTT client.

:class:`FairQueue` keeps items in lanes named by a *key path* (the query desk uses
``(stream_id, reply_route)``) and serves them round-robin at every level: streams take turns, and
within a stream the reply routes take turns. When it is full, a newcomer may evict the newest item
of a longer lane, so neither a flooded stream (whatever routes it uses) nor a flooding route
(whatever client ids it declares) can starve the others.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Container
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ForwardingQueue(asyncio.Queue):  # type: ignore[type-arg]
    """``aiomqtt.Client(queue_type=...)``: every received message goes to a longer-lived queue.

    The client's own queue then stays empty and ``client.messages`` only ends (``MqttError``) when
    the connection drops; the messages it received are not lost with the client object.
    """

    def __init__(self, target: asyncio.Queue[Any], maxsize: int = 0) -> None:
        super().__init__()
        self._target = target

    def put_nowait(self, item: Any) -> None:
        """Hand ``item`` to the target queue."""
        self._target.put_nowait(item)


class _Lanes(Generic[T]):
    """One level of lanes: each lane is a deque (last level) or another ``_Lanes`` (nested level)."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.lanes: OrderedDict[str, Any] = OrderedDict()
        self.size = 0

    def _new_lane(self) -> Any:
        return deque() if self.depth == 1 else _Lanes(self.depth - 1)

    def _longest(self) -> str:
        """The longest lane; among equals the one served last (its newest item would wait longest)."""
        return max(reversed(self.lanes), key=lambda k: len(self.lanes[k]))

    def add(self, path: tuple[str, ...], item: T) -> None:
        lane = self.lanes.get(path[0])
        if lane is None:
            lane = self.lanes[path[0]] = self._new_lane()
        if self.depth == 1:
            lane.append(item)
        else:
            lane.add(path[1:], item)
        self.size += 1

    def take(self, blocked: Container[str] = ()) -> T:
        """The next item round-robin: the first lane's (not ``blocked``) next item; that lane goes to the back."""
        key = next(k for k in self.lanes if k not in blocked)
        lane = self.lanes[key]
        item = lane.popleft() if self.depth == 1 else lane.take()
        self.size -= 1
        if len(lane):
            self.lanes.move_to_end(key)
        else:
            del self.lanes[key]
        return item

    def popleft(self) -> T:  # a nested level looks like a deque to its parent
        return self.take()

    def __len__(self) -> int:
        return self.size

    def make_room(self, path: tuple[str, ...], item: T) -> T:
        """Evict for ``item`` (about to be added under ``path``): return the victim, or ``item`` if refused.

        The longest lane gives up its newest item when the newcomer's lane is shorter by more than
        one; when the newcomer's own lane is the longest, the choice is made inside it (next level).
        """
        if not self.lanes:
            return item
        longest_key = self._longest()
        longest = self.lanes[longest_key]
        own = self.lanes.get(path[0])
        if own is not None and len(own) == len(longest) and self.depth > 1:
            victim = own.make_room(path[1:], item)
        elif len(own or ()) + 1 >= len(longest):
            return item
        else:
            victim = longest.pop()
        if victim is not item:
            self.size -= 1
            for key in [k for k, lane in self.lanes.items() if not len(lane)]:
                del self.lanes[key]
        return victim

    def pop(self) -> T:
        """Remove and return the newest item of the longest lane (recursively)."""
        longest_key = self._longest()
        longest = self.lanes[longest_key]
        item = longest.pop()
        self.size -= 1
        if not len(longest):
            del self.lanes[longest_key]
        return item


class FairQueue(Generic[T]):
    """Items queued per key path, served round-robin across keys at every level.

    Args:
        depth: levels of the key path (1: ``push("route", ...)``; 2: ``push(("stream", "route"), ...)``).

    When full, a newcomer whose lane is shorter than the longest lane evicts that lane's newest
    item (at the first level where the lanes differ), so one lane cannot starve the others.
    """

    def __init__(self, depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, not {depth}")
        self.depth = depth
        self._root: _Lanes[T] = _Lanes(depth)
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return self._root.size

    def _path(self, key: str | tuple[str, ...]) -> tuple[str, ...]:
        path = (key,) if isinstance(key, str) else tuple(key)
        if len(path) != self.depth:
            raise ValueError(f"key {key!r} must have {self.depth} level(s)")
        return path

    def push(self, key: str | tuple[str, ...], item: T, capacity: int) -> T | None:
        """Queue ``item``; return the item refused (``item`` itself or an evicted one), or None."""
        path = self._path(key)
        evicted = None
        if self._root.size >= capacity:
            evicted = self._root.make_room(path, item)
            if evicted is item:
                return item
        self._root.add(path, item)
        self._ready.set()
        return evicted

    def pop(self, blocked: Container[str] = ()) -> T:
        """Take the next item round-robin, skipping the first-level keys in ``blocked``.

        Raises:
            StopIteration: nothing queued outside ``blocked``.
        """
        item = self._root.take(blocked)
        if not self._root.size:
            self._ready.clear()
        return item

    def _available(self, blocked: Container[str]) -> bool:
        return any(key not in blocked for key in self._root.lanes)

    async def get(self, blocked: Callable[[], Container[str]] | None = None) -> T:
        """Wait for and take the next item; ``blocked()`` names first-level keys not to take now.

        Call :meth:`poke` when what ``blocked()`` returns may have shrunk.
        """
        while True:
            skip = blocked() if blocked is not None else ()
            if self._available(skip):
                return self.pop(skip)
            self._ready.clear()
            await self._ready.wait()

    def poke(self) -> None:
        """Wake the waiting :meth:`get` calls to look again (e.g. a key is no longer blocked)."""
        self._ready.set()
