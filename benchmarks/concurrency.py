"""Running N clients in threads with a common start line."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

Ready = Callable[[], None]


def timed_clients(count: int, client: Callable[[int, Ready], None]) -> float:
    """Run ``client(k, ready)`` for k in 0..count-1, each in its own thread.

    Each client does its warm-up, calls ``ready()`` once, then its measured work. The clock starts when every
    client is ready and stops when the last one returns; returns the elapsed seconds. The first error of any
    client is raised.
    """
    barrier = threading.Barrier(count + 1)
    errors: list[BaseException] = []

    def ready() -> None:
        barrier.wait()

    def body(k: int) -> None:
        try:
            client(k, ready)
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(k,), name=f"bench-client-{k}") for k in range(count)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed
