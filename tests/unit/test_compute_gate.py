"""The compute a stage's training step and its run-ahead share: the step first, a forward only in its
waits or between steps, nothing pre-empted."""

from __future__ import annotations

import threading
import time

from pac.pipeline.gate import ComputeGate


def _start(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_a_frozen_forward_runs_only_while_the_step_waits_and_the_step_resumes_after_it() -> None:
    gate, order = ComputeGate(window=2), []
    in_wait, wait_over, forward_began, forward_may_end = (threading.Event() for _ in range(4))

    def step() -> None:
        with gate.step(0):
            order.append("F")
            time.sleep(0.05)  # computing: the forward queued meanwhile does not start
            order.append("B")
            with gate.waiting():  # e.g. the AllReduce
                in_wait.set()
                wait_over.wait(5)
            order.append("after the wait")

    def forward() -> None:
        with gate.background(1):
            forward_began.set()
            order.append("A1")
            forward_may_end.wait(5)

    training = _start(step)
    time.sleep(0.01)
    ahead = _start(forward)
    assert in_wait.wait(5) and forward_began.wait(5)
    assert order == ["F", "B", "A1"]
    wait_over.set()
    time.sleep(0.05)
    assert order == ["F", "B", "A1"]  # the wait is over, but the forward under way is not pre-empted
    forward_may_end.set()
    training.join(5)
    ahead.join(5)
    assert order == ["F", "B", "A1", "after the wait"]


def test_between_steps_only_the_forwards_the_window_allowed_before_the_next_step_run() -> None:
    gate, ran = ComputeGate(window=1), []
    with gate.step(0):
        pass  # step 1 comes next: with one step ahead, only its own frozen forward may run before it starts

    def forward(step: int) -> None:
        with gate.background(step):
            ran.append(step)

    _start(forward, 1).join(5)
    assert ran == [1]
    later = _start(forward, 2)  # queued with step 1: it waits for step 1 to start and then wait
    time.sleep(0.05)
    assert ran == [1]
    with gate.step(1):
        time.sleep(0.02)
        assert ran == [1]  # step 1 computes
        with gate.waiting():
            later.join(5)
    assert ran == [1, 2]


def test_a_step_waits_for_the_forward_under_way_and_goes_before_a_waiting_one() -> None:
    gate, order = ComputeGate(window=2), []
    holding, release = threading.Event(), threading.Event()

    def first() -> None:
        with gate.background(0):
            holding.set()
            release.wait(5)
            order.append("A0")

    def second() -> None:
        with gate.background(1):
            order.append("A1")

    def step() -> None:
        with gate.step(0):
            order.append("step 0")

    threads = [_start(first)]
    assert holding.wait(5)
    threads.append(_start(second))  # queued first ...
    time.sleep(0.05)
    threads.append(_start(step))  # ... but the step goes first
    time.sleep(0.05)
    assert order == []  # nothing pre-empts the forward under way
    release.set()
    for thread in threads:
        thread.join(5)
    assert order == ["A0", "step 0", "A1"]


def test_waiting_outside_a_step_changes_nothing() -> None:
    gate = ComputeGate(window=1)
    with gate.waiting():  # the in-process pipeline: no step holds the compute
        pass
    with gate.background(0):
        pass


def test_one_operation_computes_at_a_time() -> None:
    gate, inside, most = ComputeGate(window=50), [0], [0]
    lock = threading.Lock()

    def busy() -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.0005)
        with lock:
            inside[0] -= 1

    def steps() -> None:
        for k in range(50):
            with gate.step(k):
                busy()
                with gate.waiting():
                    time.sleep(0.0005)
                busy()

    def forwards() -> None:
        for k in range(50):
            with gate.background(k):
                busy()

    threads = [_start(steps), _start(forwards)]
    for thread in threads:
        thread.join(20)
    assert not any(thread.is_alive() for thread in threads)
    assert most[0] == 1


def test_another_threads_wait_does_not_give_away_the_steps_compute() -> None:
    gate, ran = ComputeGate(window=2), []
    with gate.step(0):
        waiter = _start(lambda: gate.waiting().__enter__())  # a forward waiting for its inputs, say
        waiter.join(5)
        ahead = _start(lambda: gate.background(1).__enter__() or ran.append(1))
        time.sleep(0.05)
        assert ran == []  # the step still holds the compute
    ahead.join(5)
    assert ran == [1]


def test_a_forward_waiting_for_the_compute_gives_up_when_the_run_ahead_stops() -> None:
    from pac.pipeline.gate import GateClosed

    gate, raised = ComputeGate(window=1), []
    with gate.step(0):
        pass

    def forward() -> None:
        try:
            with gate.background(2):  # beyond the window until step 1 starts, which never comes
                raised.append("ran")
        except GateClosed:
            raised.append("gave up")

    waiter = _start(forward)
    time.sleep(0.05)
    assert raised == []
    gate.close()
    waiter.join(5)
    assert raised == ["gave up"]
