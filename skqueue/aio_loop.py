"""asyncio on skqueue: a selector event loop whose selector is ``skqueue.selectors.KqueueSelector``.

    import asyncio
    from skqueue import aio_loop

    asyncio.run(main(), loop_factory=aio_loop.new_event_loop)        # Python 3.12+
    with asyncio.Runner(loop_factory=aio_loop.new_event_loop) as r:  # Python 3.11+
        r.run(main())
    aio_loop.run(main())                                              # either, shorter
    asyncio.set_event_loop_policy(aio_loop.KqueueEventLoopPolicy())  # the 3.11 way

The loop is asyncio's own ``SelectorEventLoop`` (its Unix flavour: signals, subprocesses
and Unix sockets included); only the readiness source changes, so everything asyncio
offers behaves as it does on BSD or macOS, where kqueue is the default selector.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from .selectors import KqueueSelector

__all__ = ["KqueueEventLoop", "KqueueEventLoopPolicy", "new_event_loop", "run"]

_T = TypeVar("_T")


class KqueueEventLoop(asyncio.SelectorEventLoop):
    """``asyncio.SelectorEventLoop`` over a :class:`KqueueSelector` (or the selector given)."""

    def __init__(self, selector: KqueueSelector | None = None) -> None:
        super().__init__(KqueueSelector() if selector is None else selector)


def new_event_loop() -> KqueueEventLoop:
    """A new :class:`KqueueEventLoop`: the ``loop_factory`` for ``asyncio.run``/``Runner``."""
    return KqueueEventLoop()


if sys.version_info >= (3, 14):  # the public name is deprecated (policies go in 3.16)
    _DefaultPolicy = asyncio._DefaultEventLoopPolicy
else:
    _DefaultPolicy = asyncio.DefaultEventLoopPolicy


class KqueueEventLoopPolicy(_DefaultPolicy):
    """The default policy (child watchers included on 3.11), making :class:`KqueueEventLoop`s.

    For code that creates loops through the policy (``asyncio.run`` without
    ``loop_factory``, ``asyncio.new_event_loop()``, Python 3.11)."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return new_event_loop()


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """``asyncio.run(main)`` on a :class:`KqueueEventLoop`, on any supported Python."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
