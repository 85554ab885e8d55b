"""Bounded background work over a stream of items, for the stages' frame loops (pure threading, no I/O).

Decoding and encoding images (OpenCV, libdeflate) and Open3D's kernels release the GIL, so a couple of
threads overlap them with the main thread's work; a bound on the items in flight keeps memory independent
of the number of frames.
"""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetch(fn: Callable[[T], R], items: Iterable[T], max_waiting: int = 4, workers: int = 2,
             name: str = "prefetch") -> Iterator[R]:
    """Yield fn(item) for each item in order, computed by `workers` background threads (named `name`-N) at
    most `max_waiting` items ahead of the consumer (so at most that many results wait in memory).

    `items` is iterated in the consumer's thread (a generator doing heavy work keeps doing it there). An
    exception in fn, or raised while iterating `items` (an interrupt), reaches the consumer after the threads
    have finished what they were handed (so a writer loses nothing it was given); closing the generator early
    (`contextlib.closing`, or a consumer that stops) cancels what has not started. The threads are joined.
    """
    items = iter(items)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    try:
        pending: deque[Future] = deque(pool.submit(fn, item) for item in itertools.islice(items, max_waiting))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(fn, item) for item in itertools.islice(items, 1))
            yield result
    except GeneratorExit:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
