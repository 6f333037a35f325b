"""The compute a stage's training operations and its run-ahead share: training first, nothing pre-empted."""

from __future__ import annotations

import threading
import time

from pac.pipeline.gate import ComputeGate


def test_a_waiting_training_operation_goes_before_a_waiting_frozen_forward() -> None:
    gate, order = ComputeGate(), []
    holding, release = threading.Event(), threading.Event()

    def first() -> None:  # a frozen forward under way
        with gate.background():
            holding.set()
            release.wait(5)
            order.append("A0")

    def later(kind: str) -> None:
        with gate.background() if kind == "A" else gate.foreground():
            order.append(kind)

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert holding.wait(5)
    threads.append(threading.Thread(target=later, args=("A",)))  # queued first ...
    threads[-1].start()
    time.sleep(0.05)
    threads.append(threading.Thread(target=later, args=("F",)))  # ... but the training operation goes first
    threads[-1].start()
    time.sleep(0.05)
    assert order == []  # nothing pre-empts the frozen forward under way
    release.set()
    for thread in threads:
        thread.join(5)
    assert order == ["A0", "F", "A"]


def test_one_operation_computes_at_a_time() -> None:
    gate, inside, most = ComputeGate(), [0], [0]
    lock = threading.Lock()

    def work(kind: str) -> None:
        for _ in range(50):
            with gate.background() if kind == "A" else gate.foreground():
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.0005)
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=work, args=(k,)) for k in "AFAF"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most[0] == 1
