"""The charts a job leaves behind: its loss per step and the timeline of one measured phase-1 step.

PNG files, matplotlib Agg, in the style of pac/planner/gantt.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PHASE_COLOURS = {1: "#4C72B0", 2: "#55A868"}


def plot_losses(history: list[dict], path: str | Path, title: str = "", faults: list[dict] | None = None,
                evaluations: list[dict] | None = None) -> None:
    """Write the loss per optimizer step to `path` (PNG): one colour per phase, epoch boundaries dashed,
    each lost device (`faults`, pac.cluster.faults.Fault) a red line where the job went on without it,
    and the evaluation metric after each epoch (`evaluations`: {"epoch", "step", metric: value}) on a
    second axis at the step where the epoch ended.

    Rows are {"step": global step, "epoch": int, "phase": 1 | 2, "loss": float}; a NaN or infinite loss is
    left out (and counted in the title). With many steps a centred moving average is drawn over the steps.
    """
    plt = _pyplot()
    rows = sorted(history, key=lambda row: row["step"])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if not rows:
        _say_empty(ax, "no steps")
        ax.set_title(title or "training loss")
    else:
        finite = [r for r in rows if r["loss"] is not None and math.isfinite(float(r["loss"]))]
        for phase in sorted({r["phase"] for r in rows}):
            points = [(r["step"], float(r["loss"])) for r in finite if r["phase"] == phase]
            _plot_phase(ax, points, PHASE_COLOURS.get(phase, "#8172B3"), f"phase {phase}")
        _mark_epochs(ax, rows)
        for i, fault in enumerate(faults or []):
            ax.axvline(fault["resumed_from_step"] + 0.5, color="#C44E52", linewidth=1.2,
                       label="device lost: went on from here" if i == 0 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        extra = _plot_evaluations(ax, evaluations or [])
        if extra:
            handles, labels = handles + [extra[0]], labels + [extra[1]]
        ax.legend(handles, labels, loc="upper right", fontsize=8)
        skipped = len(rows) - len(finite)
        last = f", last {finite[-1]['loss']:.4f}" if finite else ""
        ax.set_title(title or f"training loss: {len(rows)} steps{last}"
                              + (f" ({skipped} non-finite left out)" if skipped else ""))
    _save(plt, fig, path)


def _plot_evaluations(ax: Any, evaluations: list[dict]) -> tuple[Any, str] | None:
    """The main evaluation metric after each epoch, on a second y axis; (legend handle, label) or None."""
    from pac.metrics import main_metric

    which = "eval" if any("eval" in e for e in evaluations) else "validation"
    scored = [e for e in evaluations if which in e]
    metric = main_metric(scored[0][which]) if scored else None
    points = sorted((e["step"] - 0.5, float(e[which][metric])) for e in scored if metric in e[which])
    if not points:
        return None
    second = ax.twinx()
    xs, ys = zip(*points, strict=True)
    (line,) = second.plot(xs, ys, color="#DD8452", marker="s", markersize=5, linewidth=1.5)
    for x, y in points:
        second.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7,
                        color="#DD8452")
    name = "evaluation" if which == "eval" else "validation"
    second.set_ylabel(f"{name} {metric}", color="#DD8452")
    return line, f"{name} {metric} after each epoch"


def _plot_phase(ax: Any, points: list[tuple[int, float]], colour: str, label: str) -> None:
    if not points:
        return
    xs, ys = zip(*points, strict=True)
    window = max(5, len(xs) // 25)
    smooth = len(xs) >= 4 * window
    ax.plot(xs, ys, color=colour, linewidth=0.8, alpha=0.35 if smooth else 1.0,
            marker="o" if len(xs) <= 30 else None, markersize=3, label=None if smooth else label)
    if smooth:
        import numpy as np

        averaged = np.convolve(ys, np.ones(window) / window, mode="valid")
        start = (window - 1) // 2
        ax.plot(xs[start: start + len(averaged)], averaged, color=colour, linewidth=1.8,
                label=f"{label} (mean of {window})")


def _mark_epochs(ax: Any, rows: list[dict]) -> None:
    """A dashed line between the last step of one epoch and the first of the next, labelled at the top."""
    previous = None
    for row in rows:
        if previous is None or row["epoch"] != previous["epoch"]:
            if previous is not None:
                ax.axvline((previous["step"] + row["step"]) / 2, color="#999999", linestyle="--", linewidth=0.8)
            ax.text(row["step"], 0.98, f" epoch {row['epoch']}", transform=ax.get_xaxis_transform(),
                    ha="left", va="top", fontsize=7, color="#555555")
        previous = row


TIMELINE_OPS = ("F", "B", "send", "allreduce", "step", "wait")
TIMELINE_NAMES = {"F": "forward", "B": "backward", "send": "send", "allreduce": "AllReduce",
                  "step": "optimizer step", "wait": "waiting"}


def _timeline_colours() -> dict[str, str]:
    from pac.planner.gantt import COLOURS  # the simulated chart's colours, so the two read alike

    return {"F": COLOURS["F"], "B": COLOURS["B"], "send": COLOURS["send"], "allreduce": COLOURS["AR"],
            "step": "#55A868", "wait": "#E0E0E0"}


def plot_timeline(events: list[dict], path: str | Path, title: str = "") -> None:
    """Write a measured pipeline timeline to `path` (PNG): one row per (stage, replica, device).

    Events are {"device": str, "stage": int, "replica": int, "op": "F" | "B" | "allreduce" | "step" |
    "send" | "wait", "micro": int | None, "start_s": float, "end_s": float}; times are shown relative to
    the earliest start, F/B boxes carry their micro-batch number where there is room, and sends (which
    overlap compute) are thin strips at the bottom of their row. Colours follow pac/planner/gantt.py.
    """
    plt = _pyplot()
    colours = _timeline_colours()

    def row_of(event: dict) -> tuple[int, int, str]:
        stage, replica = event.get("stage"), event.get("replica")
        return (-1 if stage is None else stage, -1 if replica is None else replica, str(event["device"]))

    rows = sorted({row_of(e) for e in events})
    index = {row: i for i, row in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(rows) + 1.5))
    if not events:
        _say_empty(ax, "no events")
        ax.set_title(title or "measured timeline")
        _save(plt, fig, path)
        return
    origin = min(e["start_s"] for e in events)
    span = max(e["end_s"] for e in events) - origin
    for event in sorted(events, key=lambda e: e["op"] == "send"):  # sends last, over what they overlap
        y = index[row_of(event)]
        start, width = event["start_s"] - origin, max(0.0, event["end_s"] - event["start_s"])
        op = event["op"]
        # a send overlaps compute on its row, so it is a thin strip at the bottom of the row
        lane = (y + 0.1, 0.3) if op == "send" else (y - 0.4, 0.8)
        ax.broken_barh([(start, width)], lane, facecolors=colours.get(op, "#937860"), edgecolor="white",
                       linewidth=0.5)
        if op in ("F", "B") and event.get("micro") is not None and width > span / 80:
            ax.text(start + width / 2, y, str(event["micro"]), ha="center", va="center", fontsize=7,
                    color="white")
    ax.set_yticks(range(len(rows)), [_row_label(*row) for row in rows])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first event")
    present = [op for op in TIMELINE_OPS if any(e["op"] == op for e in events)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[op]) for op in present]
    ax.legend(handles, [TIMELINE_NAMES[op] for op in present], loc="upper left", bbox_to_anchor=(1.0, 1.0),
              fontsize=8)
    ax.set_title(title or f"measured timeline: {span:.3f} s, {len(rows)} rows")
    _save(plt, fig, path)


def _row_label(stage: int, replica: int, device: str) -> str:
    device = device if len(device) <= 20 else device[:19] + "…"
    return f"stage {stage} / r{replica} ({device})"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _say_empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=14, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(plt: Any, fig: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
