"""Work done ahead, on a background thread, for a later stage of the same process (`promptmesh run`).

The runner starts a piece of work as soon as its inputs exist, while an earlier stage leaves a core idle, and
the stage that needs it `take`s the result. Each piece is keyed by where it will be used and by the inputs it
was computed from: a stage whose inputs differ (a setting changed in between) finds nothing and does the work
itself, so a result never depends on whether the work was done ahead. Nothing here touches the disk.
"""
from __future__ import annotations

import importlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Hashable, Iterable, Optional

from .errors import PromptmeshError

log = logging.getLogger(__name__)

_started: dict[Hashable, tuple[Any, Future]] = {}
_lock = threading.Lock()


def in_thread(fn: Callable[[], Any], name: str) -> Future:
    """fn() running on a new thread named `name`, which ends with it."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    future = pool.submit(fn)
    pool.shutdown(wait=False)  # the thread ends after this one task
    return future


def preload(modules: Iterable[str], name: str) -> Future:
    """Import `modules` on a new thread (named `name`) now, so that the stage importing them later finds them
    loaded; an import that fails is left for that stage to meet and report."""
    def load() -> None:
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError:
                log.debug("ahead: preloading %s failed", module)

    return in_thread(load, name)


def start(keys: Iterable[Hashable], inputs: Any, fn: Callable[[], Any], name: str) -> None:
    """Run fn() once, on a new thread (named `name`), for the stages that will `take(key, inputs)` under each of
    `keys` (several stages that need the same result share one computation); replaces what an earlier `start`
    or `put` left under those keys."""
    future = in_thread(fn, name)
    with _lock:
        for key in keys:
            _started[key] = (inputs, future)


def put(key: Hashable, inputs: Any, value: Any) -> None:
    """Hand `value`, already computed, to the stage that will `take(key, inputs)`."""
    done: Future = Future()
    done.set_result(value)
    with _lock:
        _started[key] = (inputs, done)


def take(key: Hashable, inputs: Any) -> Optional[Any]:
    """The result of the work started under `key` with equal `inputs` (waiting for it), else None: nothing was
    started, the inputs differ, or the work met a PromptmeshError (the stage meets it again doing the work
    itself, and reports it). Other exceptions (bugs) propagate. Either way the entry is gone."""
    with _lock:
        entry = _started.pop(key, None)
    if entry is None:
        return None
    started_with, future = entry
    if started_with != inputs:
        log.debug("ahead: %s was started for other inputs; not used", key)
        return None
    try:
        return future.result()
    except PromptmeshError as e:
        log.debug("ahead: %s failed (%s); the stage does it again", key, e)
        return None


def discard(key: Hashable) -> None:
    """Forget the work under `key` (a stage that is up to date needs none); a running thread still finishes."""
    with _lock:
        _started.pop(key, None)
