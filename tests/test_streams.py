"""streams.prefetch: order, errors, early stop and the bound on work in flight; ahead: work for a later stage."""
import threading
import time

import pytest

from pipeline import ahead, streams
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


def test_ahead_gives_work_only_to_equal_inputs_and_once():
    ran = []
    ahead.start(["k"], ("voxel", 0.01), lambda: ran.append(1) or 42, name="t-ahead")
    assert ahead.take("k", ("voxel", 0.02)) is None  # other inputs: not used, and gone
    assert ahead.take("k", ("voxel", 0.01)) is None
    ahead.start(["k"], ("voxel", 0.01), lambda: 7, name="t-ahead")
    assert ahead.take("k", ("voxel", 0.01)) == 7
    assert ahead.take("k", ("voxel", 0.01)) is None  # taken once
    ahead.put("k", None, "grid")
    ahead.discard("k")
    assert ahead.take("k", None) is None


def test_ahead_promptmesh_errors_mean_redo_and_bugs_propagate():
    def unusable():
        raise PromptmeshError("capture/lidar/000003.png: unreadable")

    ahead.start(["k"], 1, unusable, name="t-ahead")
    assert ahead.take("k", 1) is None  # the stage does the work itself and reports the problem

    def bug():
        raise ZeroDivisionError("bug")

    ahead.start(["k"], 1, bug, name="t-ahead")
    with pytest.raises(ZeroDivisionError):
        ahead.take("k", 1)


def test_ahead_shares_one_computation_between_keys():
    calls = []
    ahead.start(["a", "b"], 1, lambda: calls.append(1) or "plan", name="t-ahead")
    assert (ahead.take("a", 1), ahead.take("b", 1), calls) == ("plan", "plan", [1])


def test_preload_imports_on_a_thread_and_leaves_failures_to_the_stage(tmp_path, monkeypatch):
    import sys

    (tmp_path / "promptmesh_preload_probe.py").write_text(
        "import threading\nimported_on = threading.current_thread().name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "promptmesh_preload_probe", raising=False)
    done = ahead.preload(["promptmesh_no_such_module", "promptmesh_preload_probe"], name="t-preload")
    assert done.result(timeout=30) is None  # the missing module does not stop the others, nor raise
    assert sys.modules["promptmesh_preload_probe"].imported_on.startswith("t-preload")
    assert "promptmesh_no_such_module" not in sys.modules
