"""The controller's report: progress lines, time-left arithmetic, charts and the metrics file."""

from __future__ import annotations

import io
import json
import math

import pytest

from pac.cluster.plots import plot_losses, plot_timeline
from pac.cluster.progress import (
    CLEAR_TO_END,
    PhaseSchedule,
    Progress,
    TimeLeft,
    estimate_time_left,
    format_duration,
)
from pac.cluster.report import write_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_epochs(progress: Progress, clock: FakeClock, epochs: int, steps: int, step_s: float,
               phase: str = "1", samples: int = 8) -> None:
    for epoch in range(1, epochs + 1):
        for step in range(1, steps + 1):
            clock.now += step_s
            progress.update(phase, epoch, epochs, step, steps, 0.5, samples)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.4, "0s"), (45, "45s"), (59.4, "59s"), (59.6, "1m00s"), (80, "1m20s"),
    (3599, "59m59s"), (3720, "1h02m"), (90000, "25h00m"), (-3, "0s"), (math.inf, "?"), (math.nan, "?"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_plain_lines_are_throttled_and_every_epoch_end_is_printed():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(stream, tty=False, min_interval_s=2.0, clock=clock)
    run_epochs(progress, clock, epochs=2, steps=10, step_s=0.5)  # 5 s per epoch
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    steps = [line.split("  ")[1:3] for line in lines]
    # the first step; then every 2 s (4 steps); epoch ends always, and they restart the interval
    assert steps == [["epoch 1/2", "step 1/10"], ["epoch 1/2", "step 5/10"], ["epoch 1/2", "step 9/10"],
                     ["epoch 1/2", "step 10/10"], ["epoch 2/2", "step 4/10"], ["epoch 2/2", "step 8/10"],
                     ["epoch 2/2", "step 10/10"]]
    assert lines[-1] == "phase 1  epoch 2/2  step 10/10  loss 0.5000  16.0 samples/s  ~0s left"


def test_plain_close_prints_a_step_that_was_not_shown():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(stream, tty=False, clock=clock)
    for step in (1, 2):
        clock.now += 0.5
        progress.update("1", 1, 1, step, 10, None, 4)
    assert len(stream.getvalue().splitlines()) == 1
    progress.close()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("phase 1  epoch 1/1  step 2/10  loss -")


def test_plain_message_is_its_own_line():
    stream, clock = io.StringIO(), FakeClock()
    with Progress(stream, tty=False, clock=clock) as progress:
        progress.update("1", 1, 1, 1, 2, 0.7, 4)
        progress.message("phase 2: moved 12.3 MB of cached states in 0.4 s")
    assert stream.getvalue().splitlines()[1] == "phase 2: moved 12.3 MB of cached states in 0.4 s"


def test_tty_rewrites_one_line_and_message_redraws_it():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(stream, tty=True, clock=clock)
    run_epochs(progress, clock, epochs=1, steps=3, step_s=1.0)
    out = stream.getvalue()
    assert "\n" not in out
    assert out.count("\r") == 3 and out.endswith("step 3/3  loss 0.5000  8.0 samples/s  ~0s left" + CLEAR_TO_END)

    before = len(out)
    progress.message("phase 2: moved 12.3 MB of cached states in 0.4 s")
    added = stream.getvalue()[before:]
    # clear the progress line, print the message on its own line, draw the progress line again
    assert added == ("\r" + CLEAR_TO_END + "phase 2: moved 12.3 MB of cached states in 0.4 s\n"
                     + "\r" + "phase 1  epoch 1/1  step 3/3  loss 0.5000  8.0 samples/s  ~0s left" + CLEAR_TO_END)
    progress.close()
    assert stream.getvalue().endswith(CLEAR_TO_END + "\n")


def test_tty_message_before_any_step_draws_no_empty_line():
    stream = io.StringIO()
    progress = Progress(stream, tty=True, clock=FakeClock())
    progress.message("waiting for 3 devices")
    progress.close()
    assert stream.getvalue() == "waiting for 3 devices\n"


def test_tty_is_detected_from_the_stream():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream, clock = Terminal(), FakeClock()
    Progress(stream, clock=clock).update("1", 1, 1, 1, 2, 0.7, 4)
    assert stream.getvalue().startswith("\r")


def test_rate_is_smoothed_and_the_pause_between_phases_is_not_counted():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(stream, tty=False, clock=clock, smoothing=0.5)
    assert progress.samples_per_s is None
    run_epochs(progress, clock, epochs=1, steps=3, step_s=1.0, samples=10)  # 10 samples/s
    assert progress.samples_per_s == pytest.approx(10.0)
    clock.now += 60  # moving the cache
    progress.update("2", 2, 3, 1, 3, 0.4, 10)
    assert progress.samples_per_s is None and progress.time_left is None
    clock.now += 0.1
    progress.update("2", 2, 3, 2, 3, 0.4, 10)
    assert progress.samples_per_s == pytest.approx(100.0)
    clock.now += 0.3
    progress.update("2", 2, 3, 3, 3, 0.4, 10)
    # EMAs with weight 0.5: 0.2 s per step and 10 samples per step
    assert progress.samples_per_s == pytest.approx(50.0)


def test_time_left_without_a_schedule_counts_every_epoch_at_the_current_rate():
    # 12 steps left in this epoch + 2 epochs x 58 steps, at 0.5 s per step
    left = estimate_time_left("1", 1, 3, 46, 58, {"1": 0.5})
    assert left == TimeLeft(64.0, True) and str(left) == "~1m04s left"
    assert estimate_time_left("1", 1, 3, 46, 58, {}) is None


def test_steps_left_total_overrides_the_epoch_arithmetic():
    assert estimate_time_left("1", 1, 3, 46, 58, {"1": 0.5}, steps_left_total=30) == TimeLeft(15.0, True)


def test_time_left_with_a_schedule_prices_each_phase_at_its_own_rate():
    schedule = (PhaseSchedule("1", epochs=1, steps=58), PhaseSchedule("2", epochs=2, steps=58))
    # phase 2 has not run and has no prior: the rest of phase 1 only, a lower bound
    left = estimate_time_left("1", 1, 3, 46, 58, {"1": 0.5}, schedule)
    assert left == TimeLeft(6.0, False) and str(left) == ">6s left"
    # a prior for phase 2: 12 x 0.5 + 2 x 58 x 0.05
    schedule = (schedule[0], PhaseSchedule("2", epochs=2, steps=58, seconds_per_step=0.05))
    assert estimate_time_left("1", 1, 3, 46, 58, {"1": 0.5}, schedule).seconds == pytest.approx(11.8)
    # in phase 2 its measured rate counts, for the rest of epoch 2 and all of epoch 3
    left = estimate_time_left("2", 2, 3, 8, 58, {"1": 0.5, "2": 0.1}, schedule)
    assert left.seconds == pytest.approx((50 + 58) * 0.1) and left.complete
    # before phase 2 has a measured rate, its prior stands in
    assert estimate_time_left("2", 2, 3, 1, 58, {"1": 0.5}, schedule).seconds == pytest.approx(115 * 0.05)


def test_progress_shows_the_time_left_from_its_schedule():
    stream, clock = io.StringIO(), FakeClock()
    schedule = (PhaseSchedule("1", 1, 4), PhaseSchedule("2", 2, 4, seconds_per_step=0.25))
    progress = Progress(stream, tty=False, clock=clock, schedule=schedule)
    for step in (1, 2):
        clock.now += 10.0
        progress.update("1", 1, 3, step, 4, 0.7, 8)
    # step 2 of 4 at 10 s per step: 20 s in phase 1 + 2 x 4 x 0.25 s in phase 2
    assert progress.time_left == TimeLeft(22.0, True)


def test_schedule_rejects_impossible_phases():
    with pytest.raises(ValueError, match="seconds_per_step"):
        PhaseSchedule("2", 2, 58, seconds_per_step=0)
    with pytest.raises(ValueError, match="epochs"):
        PhaseSchedule("1", -1, 58)


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000


def test_plot_losses_writes_a_png(tmp_path):
    history = [{"step": s, "epoch": 1 + (s - 1) // 40, "phase": 1 if s <= 40 else 2, "loss": 1.0 / s}
               for s in range(1, 121)]
    history[5]["loss"] = math.nan
    plot_losses(history, tmp_path / "loss.png")
    assert_png(tmp_path / "loss.png")


def test_plot_losses_of_an_empty_history_writes_a_png(tmp_path):
    plot_losses([], tmp_path / "charts" / "loss.png")
    assert_png(tmp_path / "charts" / "loss.png")


def test_plot_timeline_writes_a_png(tmp_path):
    events = []
    for replica, device in enumerate(("node abcd", "node ef01")):
        for micro in range(4):
            for stage, op, start in ((0, "F", micro), (1, "F", micro + 1), (1, "B", micro + 5), (0, "B", micro + 6)):
                events.append({"device": device, "stage": stage, "replica": replica, "op": op, "micro": micro,
                               "start_s": 1000.0 + start * 0.1, "end_s": 1000.09 + start * 0.1})
        events.append({"device": device, "stage": 0, "replica": replica, "op": "allreduce", "micro": None,
                       "start_s": 1001.0, "end_s": 1001.2})
        events.append({"device": device, "stage": 0, "replica": replica, "op": "wait", "micro": None,
                       "start_s": 1000.4, "end_s": 1000.6})
    plot_timeline(events, tmp_path / "timeline.png", title="one mini-batch")
    assert_png(tmp_path / "timeline.png")
    plot_timeline([], tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png")


def test_write_metrics_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics(path, {"accuracy": 0.5})
    write_metrics(path, {"accuracy": 0.75, "epochs": [1, 2]})
    assert json.loads(path.read_text()) == {"accuracy": 0.75, "epochs": [1, 2]}
    assert path.read_text().startswith('{\n  "accuracy"')
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_metrics_that_fails_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics(path, {"accuracy": 0.5})
    with pytest.raises(TypeError):
        write_metrics(path, {"accuracy": object()})
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
