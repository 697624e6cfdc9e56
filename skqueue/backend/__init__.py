"""OS readiness sources of one kqueue (epoll, eventfd, timerfd); see epoll.py."""

from .epoll import Backend, monotonic_ns

__all__ = ["Backend", "monotonic_ns"]
