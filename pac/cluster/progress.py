"""The progress line of `pacctl train`: one line per optimizer step, and the time left in the whole job.

Rewritten in place on a terminal, throttled plain lines elsewhere, with a smoothed samples/s. Nothing here
touches the network: the controller passes in the stream and the clock.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TextIO

CLEAR_TO_END = "\x1b[K"
TTY_REDRAW_S = 0.1  # a terminal line is redrawn at most this often (phase-2 steps can take milliseconds)


def format_duration(seconds: float) -> str:
    """45s, 1m20s, 1h02m; "?" when unknown (NaN or infinite)."""
    if not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


@dataclass(frozen=True)
class PhaseSchedule:
    """One phase of the job, in order, for the time-left estimate.

    Epochs are numbered across the whole job: with epochs=3, phase 1 runs epoch 1 and phase 2 epochs 2-3,
    so the schedule is (PhaseSchedule("1", 1, steps), PhaseSchedule("2", 2, steps, plan_s_per_step)).
    """

    phase: str  # as passed to Progress.update
    epochs: int  # how many of the job's epochs this phase runs
    steps: int  # optimizer steps per epoch
    seconds_per_step: float | None = None  # a prior (e.g. plan.phase2.epoch_s / steps) until the phase runs

    def __post_init__(self) -> None:
        object.__setattr__(self, "phase", str(self.phase))
        if self.epochs < 0 or self.steps < 0:
            raise ValueError(f"phase {self.phase}: epochs ({self.epochs}) and steps ({self.steps}) must be >= 0")
        if self.seconds_per_step is not None and not self.seconds_per_step > 0:
            raise ValueError(f"phase {self.phase}: seconds_per_step must be > 0 or None (unknown), "
                             f"not {self.seconds_per_step}")


@dataclass(frozen=True)
class TimeLeft:
    """An estimate of the time left in the job."""

    seconds: float
    complete: bool  # False: a later phase has no rate yet, so `seconds` is a lower bound

    def __str__(self) -> str:
        return f"{'~' if self.complete else '>'}{format_duration(self.seconds)} left"


def estimate_time_left(
    phase: str,
    epoch: int,
    epochs: int,
    step: int,
    steps: int,
    seconds_per_step: Mapping[str, float],
    schedule: Sequence[PhaseSchedule] = (),
    steps_left_total: int | None = None,
) -> TimeLeft | None:
    """The time left after step `step` of `steps` in epoch `epoch` of `epochs`; None while `phase` has no rate.

    `seconds_per_step` holds the measured rate of each phase that has run; a phase that has none yet takes
    its prior from `schedule`, if any. In order of precedence:
    - `steps_left_total`: the caller counted the steps left in the job; they take the current rate.
    - `phase` is in `schedule`: the rest of this phase's epochs at its rate, then each later phase's
      epochs x steps at its measured rate or else its prior; a later phase with neither makes the
      estimate a lower bound (complete=False).
    - otherwise: the rest of this epoch and (epochs - epoch) whole epochs, all at the current rate.
    """
    phase = str(phase)
    priors = {s.phase: s.seconds_per_step for s in schedule if s.seconds_per_step is not None}
    rate = seconds_per_step.get(phase, priors.get(phase))
    if rate is None:
        return None
    this_epoch = max(0, steps - step)
    if steps_left_total is not None:
        return TimeLeft(max(0, steps_left_total) * rate, True)
    names = [s.phase for s in schedule]
    if phase not in names:
        return TimeLeft((this_epoch + max(0, epochs - epoch) * steps) * rate, True)
    index = names.index(phase)
    last_epoch = sum(s.epochs for s in schedule[: index + 1])
    seconds = (this_epoch + max(0, last_epoch - epoch) * steps) * rate
    complete = True
    for later in schedule[index + 1:]:
        later_rate = seconds_per_step.get(later.phase, priors.get(later.phase))
        if later_rate is None:
            complete = complete and later.epochs * later.steps == 0
            continue
        seconds += later.epochs * later.steps * later_rate
    return TimeLeft(seconds, complete)


@dataclass
class _Rate:
    """Exponential moving averages of one phase's step time and samples per step."""

    seconds_per_step: float
    samples_per_step: float

    def observe(self, seconds: float, samples: int, smoothing: float) -> None:
        self.seconds_per_step += smoothing * (seconds - self.seconds_per_step)
        self.samples_per_step += smoothing * (samples - self.samples_per_step)

    @property
    def samples_per_s(self) -> float | None:
        return self.samples_per_step / self.seconds_per_step if self.seconds_per_step > 0 else None


class Progress:
    """The progress of a training job on `stream`: one line rewritten in place on a terminal, else plain lines.

    Plain lines come at most once per `min_interval_s`, plus the first step, the last step of every epoch
    and, on close(), the latest step if it was not shown. The rate of a phase is measured between
    consecutive steps of that phase (the first step of a phase only starts the clock, so the pause between
    phases does not count) and smoothed with `smoothing` (the weight of the newest step). For the time
    left, see estimate_time_left: pass `schedule` when phases run at different rates (phase 2 over the
    cache is much faster than phase 1), or `steps_left_total` to update() to count the steps yourself.
    `stream` defaults to sys.stderr as it is when Progress is made (so captured streams work).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        tty: bool | None = None,
        min_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        schedule: Sequence[PhaseSchedule] = (),
        smoothing: float = 0.2,
    ) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], not {smoothing}")
        self._stream = sys.stderr if stream is None else stream
        self._tty = _isatty(self._stream) if tty is None else tty
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._schedule = tuple(schedule)
        self._smoothing = smoothing
        self._lock = threading.Lock()  # message() may come from another thread than update()
        self._rates: dict[str, _Rate] = {}
        self._phase: str | None = None
        self._step_time: float | None = None  # when the last step of self._phase ended
        self._line = ""  # the latest progress line
        self._line_shown = True  # whether self._line has been written (plain) or drawn (terminal)
        self._drawn = False  # a terminal line is on screen, without a newline after it
        self._shown_at: float | None = None
        self._time_left: TimeLeft | None = None
        self._closed = False

    @property
    def samples_per_s(self) -> float | None:
        """The smoothed rate of the current phase; None before its second step."""
        rate = self._rates.get(self._phase) if self._phase is not None else None
        return rate.samples_per_s if rate is not None else None

    @property
    def time_left(self) -> TimeLeft | None:
        """The estimate after the latest step; None before the current phase has a rate."""
        return self._time_left

    def update(self, phase: str, epoch: int, epochs: int, step: int, steps: int, loss: float | None,
               samples: int, *, steps_left_total: int | None = None) -> None:
        """Record that optimizer step `step` (1-based, within the epoch) of `steps` trained `samples`."""
        now = self._clock()
        phase = str(phase)
        with self._lock:
            if self._closed:
                return
            if phase == self._phase and self._step_time is not None:
                self._observe(phase, now - self._step_time, samples)
            self._phase, self._step_time = phase, now
            rates = {name: rate.seconds_per_step for name, rate in self._rates.items()}
            self._time_left = estimate_time_left(phase, epoch, epochs, step, steps, rates, self._schedule,
                                                 steps_left_total)
            self._line = self._format(phase, epoch, epochs, step, steps, loss)
            self._line_shown = False
            if self._due(now) or step >= steps:
                self._show(now)

    def set_schedule(self, schedule: Sequence[PhaseSchedule]) -> None:
        """The job's phases, once known (after planning), for the time-left estimate."""
        with self._lock:
            self._schedule = tuple(schedule)

    def message(self, text: str) -> None:
        """Print a one-off line; on a terminal the progress line is cleared first and redrawn after."""
        with self._lock:
            if self._closed:
                return
            if self._drawn:
                self._stream.write("\r" + CLEAR_TO_END)
            self._stream.write(text.rstrip("\n") + "\n")
            self._drawn = False
            if self._tty and self._line:
                self._show(self._clock())
            self._stream.flush()

    def close(self) -> None:
        """End the progress line (show the latest step if it was not shown); further calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._line and not self._line_shown:
                self._show(self._clock())
            if self._drawn:
                self._stream.write("\n")
                self._drawn = False
            self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _observe(self, phase: str, seconds: float, samples: int) -> None:
        rate = self._rates.get(phase)
        if rate is None:
            self._rates[phase] = _Rate(seconds, samples)
        else:
            rate.observe(seconds, samples, self._smoothing)

    def _format(self, phase: str, epoch: int, epochs: int, step: int, steps: int, loss: float | None) -> str:
        parts = [f"phase {phase}", f"epoch {epoch}/{epochs}", f"step {step}/{steps}",
                 "loss -" if loss is None else f"loss {loss:.4f}"]
        rate = self._rates.get(phase)
        samples_per_s = rate.samples_per_s if rate is not None else None
        if samples_per_s is not None:
            parts.append(f"{samples_per_s:.1f} samples/s")
        if self._time_left is not None:
            parts.append(str(self._time_left))
        return "  ".join(parts)

    def _due(self, now: float) -> bool:
        if self._shown_at is None:
            return True
        return now - self._shown_at >= (TTY_REDRAW_S if self._tty else self._min_interval_s)

    def _show(self, now: float) -> None:
        if self._tty:
            width = _terminal_width(self._stream)
            line = self._line if width is None else self._line[: max(1, width - 1)]
            self._stream.write("\r" + line + CLEAR_TO_END)
            self._drawn = True
        else:
            self._stream.write(self._line + "\n")
        self._stream.flush()
        self._line_shown = True
        self._shown_at = now


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _terminal_width(stream: TextIO) -> int | None:
    """Columns of the terminal behind `stream`: a line wider than that would wrap and break '\\r'."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return None
