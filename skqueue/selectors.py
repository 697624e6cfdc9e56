"""``KqueueSelector``: a :class:`selectors.BaseSelector` over skqueue, for Linux.

    from skqueue.selectors import KqueueSelector
    sel = KqueueSelector()              # anywhere a selector is accepted
    sel.register(sock, selectors.EVENT_READ, data)
    for key, events in sel.select(timeout=1.0):
        ...

It behaves as CPython's ``selectors.KqueueSelector`` does on BSD and macOS:
``EVENT_READ`` is an ``EVFILT_READ`` knote, ``EVENT_WRITE`` an ``EVFILT_WRITE`` knote,
both level-triggered.  A descriptor at end of file or with a pending error is reported
ready (kqueue's ``EV_EOF``), so the program's own read/write/``SO_ERROR`` call finds out
which.  Differences from CPython's implementation, none of which a program can rely on
the other way:

* ``register``/``modify`` apply their knote changes in one ``kevent`` call with
  ``EV_RECEIPT`` and undo the part that succeeded if another part fails, so a failed
  call leaves the kqueue as it was (CPython may leave a READ knote behind a failed
  WRITE registration).  A failed ``modify`` unregisters the file object, as every
  CPython selector does.
* ``modify`` adds and deletes only the filters that change, instead of unregistering
  and registering again.
* ``select`` returns one ``(key, events)`` pair per ready file object, with READ and
  WRITE merged, as :meth:`selectors.BaseSelector.select` documents (CPython's kqueue
  selector may return the same key twice).

Regular files may be registered, as on BSD (epoll refuses them): always writable, readable
until end of file.  The selector is not thread-safe, like every stdlib selector.
"""

from __future__ import annotations

import os
import selectors
from collections.abc import Iterator, Mapping
from typing import Any

from ._kevent import kevent
from ._kqueue import kqueue
from .constants import EV_ADD, EV_DELETE, EV_RECEIPT, EVFILT_READ, EVFILT_WRITE

__all__ = ["KqueueSelector"]

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE
_ALL_EVENTS = EVENT_READ | EVENT_WRITE
# (selector event bit, kqueue filter), in the order the changes are applied
_FILTERS = ((EVENT_READ, EVFILT_READ), (EVENT_WRITE, EVFILT_WRITE))


def _fd_of(fileobj: Any) -> int:
    """The descriptor of ``fileobj`` (an int or an object with ``fileno()``)."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


class _KeyView(Mapping[Any, selectors.SelectorKey]):
    """The read-only ``get_map()`` view: file objects (or descriptors) to keys."""

    __slots__ = ("_sel",)

    def __init__(self, sel: KqueueSelector) -> None:
        self._sel = sel

    def __len__(self) -> int:
        return len(self._sel._keys)

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        fd = self._sel._find_fd(fileobj)
        try:
            return self._sel._keys[fd]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._sel._keys)


class KqueueSelector(selectors.BaseSelector):
    """A selector over a private ``skqueue.kqueue`` (legacy mode, FreeBSD semantics)."""

    def __init__(self) -> None:
        self._kq = kqueue()
        self._keys: dict[int, selectors.SelectorKey] = {}
        self._view: _KeyView | None = _KeyView(self)
        self._nfilters = 0  # filters of the registered keys: the most events one select() returns

    # ------------------------------------------------------------------ lookup
    def _find_fd(self, fileobj: Any) -> int:
        """``fileobj``'s descriptor; for an object that no longer has one (a closed
        socket), the descriptor it was registered under."""
        try:
            return _fd_of(fileobj)
        except ValueError:
            for key in self._keys.values():
                if key.fileobj is fileobj:
                    return key.fd
            raise

    def _registered(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self._keys[self._find_fd(fileobj)]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    # ------------------------------------------------------------------ knotes
    def _apply(self, fd: int, add: int, delete: int) -> tuple[int, int]:
        """Add the filters in ``add`` and delete those in ``delete`` (event bits) in one
        call.  Returns ``(added, first_errno)``: the bits whose addition succeeded and the
        first failed addition's errno (0 if none).  Failed deletions are ignored: the
        descriptor may have been closed since it was registered, which removed its
        knotes already."""
        changes = [
            kevent(fd, filt, (EV_ADD if bit & add else EV_DELETE) | EV_RECEIPT)
            for bit, filt in _FILTERS
            if bit & (add | delete)
        ]
        added = err = 0
        for receipt in self._kq.control(changes, len(changes), 0):
            bit = EVENT_READ if receipt.filter == EVFILT_READ else EVENT_WRITE
            if bit & add:
                if receipt.data:
                    err = err or receipt.data
                else:
                    added |= bit
        return added, err

    def _set_filters(self, fd: int, old: int, new: int) -> None:
        """Move ``fd`` from the filters of ``old`` to those of ``new``; on failure put the
        added ones back out and raise the kqueue's error."""
        added, err = self._apply(fd, new & ~old, old & ~new)
        if err:
            if added:
                self._apply(fd, 0, added)
            raise OSError(err, os.strerror(err))

    # ------------------------------------------------------------------ BaseSelector
    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if not events or events & ~_ALL_EVENTS:
            raise ValueError(f"Invalid events: {events!r}")
        fd = self._find_fd(fileobj)
        if fd in self._keys:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        self._set_filters(fd, 0, events)
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        self._nfilters += events.bit_count()
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = self._registered(fileobj)
        del self._keys[key.fd]
        self._nfilters -= key.events.bit_count()
        self._apply(key.fd, 0, key.events)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = self._registered(fileobj)
        if events != key.events:
            if not events or events & ~_ALL_EVENTS:
                raise ValueError(f"Invalid events: {events!r}")
            try:
                self._set_filters(key.fd, key.events, events)
            except BaseException:
                # As every stdlib selector does: a failed modify leaves fileobj unregistered
                # (the filters it dropped are gone already; delete the ones it kept).
                del self._keys[key.fd]
                self._nfilters -= key.events.bit_count()
                self._apply(key.fd, 0, key.events & events)
                raise
            self._nfilters += events.bit_count() - key.events.bit_count()
            key = key._replace(events=events, data=data)
        elif data != key.data:
            key = key._replace(data=data)
        else:
            return key
        self._keys[key.fd] = key
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout < 0:
            timeout = 0
        # max_events 0 would make kevent() return at once; one slot keeps the timeout.
        evs = self._kq.control(None, self._nfilters or 1, timeout)
        ready: dict[int, int] = {}
        for ev in evs:
            bit = EVENT_READ if ev.filter == EVFILT_READ else EVENT_WRITE
            ready[ev.ident] = ready.get(ev.ident, 0) | bit
        out = []
        keys = self._keys
        for fd, bits in ready.items():
            key = keys.get(fd)
            if key is not None and bits & key.events:
                out.append((key, bits & key.events))
        return out

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._view  # type: ignore[return-value]  # None once closed, as in CPython

    def close(self) -> None:
        self._kq.close()
        self._keys.clear()
        self._nfilters = 0
        self._view = None

    def fileno(self) -> int:
        """The kqueue's descriptor: it polls readable while events are pending."""
        return self._kq.fileno()

    def __repr__(self) -> str:
        state = "closed" if self._view is None else f"{len(self._keys)} registered"
        return f"<{type(self).__name__} {state}>"

