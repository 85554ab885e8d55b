"""streams.prefetch: order, errors, early stop and the bound on work in flight."""
import threading
import time

import pytest

from pipeline import streams
from pipeline.errors import PromptmeshError


def test_prefetch_keeps_order_and_reraises():
    assert list(streams.prefetch(lambda x: x * x, range(20), max_waiting=2)) == [x * x for x in range(20)]

    def boom(x):
        if x == 3:
            raise PromptmeshError("frame 3 broken")
        return x

    got = []
    with pytest.raises(PromptmeshError, match="frame 3"):
        for x in streams.prefetch(boom, range(10)):
            got.append(x)
    assert got == [0, 1, 2]
    # a consumer that stops early stops the reader thread too
    gen = streams.prefetch(lambda x: x, range(1000), max_waiting=2)
    assert next(gen) == 0
    gen.close()
    assert not any(t.name.startswith("prefetch") for t in threading.enumerate())


def test_prefetch_computes_at_most_max_waiting_ahead():
    started, consumed, ahead = [], [], []

    def work(i):
        started.append(i)
        return i

    for item in streams.prefetch(work, range(40), max_waiting=3, workers=2):
        time.sleep(0.002)
        ahead.append(len(started) - len(consumed))  # the item in hand and those computed after it
        consumed.append(item)
    assert consumed == list(range(40))
    assert max(ahead) == 1 + 3


def test_an_interrupt_while_producing_items_lets_handed_out_work_finish():
    done = []

    def slow_write(i):
        time.sleep(0.05)
        done.append(i)
        return i

    def produce():
        yield from range(3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        for _ in streams.prefetch(slow_write, produce(), max_waiting=4):
            pass
    assert sorted(done) == [0, 1, 2]  # nothing handed to the threads is dropped
