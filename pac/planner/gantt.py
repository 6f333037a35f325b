"""Draw a simulated phase-1 mini-batch as a Gantt chart (PNG): one row per stage and boundary channel."""

from __future__ import annotations

from pathlib import Path

from pac.planner.simulator import Phase1Simulation

COLOURS = {"F": "#4C72B0", "B": "#DD8452", "send": "#8C8C8C", "AR": "#C44E52", "A": "#8172B3"}


def draw_gantt(simulation: Phase1Simulation, path: str | Path, title: str = "") -> None:
    """Write the chart of `simulation` to `path` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def row_key(name: str) -> tuple[int, int, str]:
        kind, _, rest = name.partition(" ")
        first = int(rest.split("->")[0]) if rest.split("->")[0].isdigit() else 0
        return (first, 0 if kind == "stage" else 1, name)

    rows = sorted({e.resource for e in simulation.events}, key=row_key)
    index = {name: i for i, name in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(rows) + 1.5))
    for event in simulation.events:
        y = index[event.resource]
        width = event.end - event.start
        ax.broken_barh([(event.start, width)], (y - 0.4, 0.8), facecolors=COLOURS.get(event.kind, "#55A868"),
                       edgecolor="white", linewidth=0.5)
        if event.micro_batch >= 0 and width > simulation.minibatch_s / 80:
            ax.text(event.start + width / 2, y, str(event.micro_batch), ha="center", va="center",
                    fontsize=7, color="white")
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ahead = simulation.run_ahead
    ax.set_xlabel("seconds into the epoch" if ahead else "seconds into the mini-batch")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, ["forward" + (" (trained part)" if ahead else ""), "backward", "transfer", "AllReduce",
                        "frozen layers, run ahead"][:len(handles)], loc="upper right", fontsize=8)
    kind = f"mini-batches, frozen layers {ahead} ahead" if ahead else "1F1B mini-batch"
    ax.set_title(title or f"{kind}: {simulation.minibatch_s:.3f} s per mini-batch, bubbles "
                          f"{simulation.bubble_fraction:.0%}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
