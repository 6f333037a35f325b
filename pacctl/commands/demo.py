"""`pacctl demo`: the built-in default job on a home of daemons started on this machine."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import click

from pac.errors import PacError

ANSWER_TOKENS = 24


async def _ask_all(daemon, identity, prompts: list[str]) -> list[str]:
    """Each question through the daemon's Assistant.Generate (greedy), as a home-automation client asks."""
    from pac.assistant.messages import Sampling
    from pac.net.assistant_client import AssistantClient

    answers = []
    async with AssistantClient(daemon.address, identity, daemon.node_id) as client:
        for prompt in prompts:
            pieces = [p async for p in client.generate([{"role": "user", "content": prompt}],
                                                       Sampling(max_new_tokens=ANSWER_TOKENS)) if isinstance(p, str)]
            answers.append("".join(pieces).strip())
    return answers


@click.command("demo")
@click.option("--devices", "count", type=click.IntRange(1, 8), default=3, show_default=True,
              help="Daemons to start on this machine (loopback, mutual TLS).")
@click.option("--model", default="smollm2-135m", show_default=True, help="A chat model (decoder or encoder-decoder).")
@click.option("--epochs", type=int, default=8, show_default=True, help="Epoch 1 runs the pipeline; the rest, the cache.")
@click.option("--lr", "learning_rate", type=float, default=1e-2, show_default=True,
              help="Learning rate (bench/household.py chose it on a validation split for the tuned top layers).")
@click.option("--questions", type=int, default=8, show_default=True, help="Held-out questions to ask (max 32).")
@click.option("--out", "output_dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True,
              help="The daemons' state, the job's outputs and the answers go here.")
@click.option("--resume", is_flag=True, help="Continue a stopped demo in --out from its newest checkpoint, on the "
              "same daemons (started again with their state) and their kept caches.")
def command(count, model, epochs, learning_rate, questions, output_dir, resume) -> None:
    """Start DEVICES daemons on this machine, pair them (mutual TLS), fine-tune a chat model on a built-in
    household dataset across them with `pacctl train`'s controller, deploy the tuned adapter to one of
    them and ask it held-out questions through its Assistant API; print its answers next to the untuned
    model's."""
    from pac.cluster.controller import RunOptions, run_training
    from pac.cluster.local import LocalCluster
    from pac.cluster.progress import Progress
    from pac.jobfile import parse_job
    from pac.train.household import HELDOUT_FILE, TRAIN_FILE, heldout_questions
    from pacctl.commands.assistant import deploy_run
    from pacctl.commands.train import kept_checkpoint

    started = time.perf_counter()
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(stream=sys.stderr)
    try:
        with LocalCluster(out / "home", count, reuse=resume) as cluster:
            progress.message(f"{count} pacd daemon(s) on 127.0.0.1, paired (mutual TLS): "
                             + ", ".join(d.address for d in cluster.daemons))
            job = parse_job({
                "model": {"name_or_path": model},
                "data": {"train": str(TRAIN_FILE), "eval": str(HELDOUT_FILE), "task": "lm"},
                "training": {"epochs": epochs, "batch_size": 8, "seq_len": 96, "learning_rate": learning_rate},
                "cache": {"precision": "fp16", "directory": str(out / "cache")},
                "devices": {"mode": "list", "addresses": [d.address for d in cluster.daemons]},
                "output": {"directory": str(out)},
            }, source="pacctl demo", base_dir=out)
            # one profiling batch size (the mini-batch): the three devices share this machine's cores, so
            # one quick measurement serves them all (pac/cluster/controller.py: once per host)
            metrics, controller = run_training(job, cluster.devices, cluster.identity, out,
                                               RunOptions(profile_batch_sizes=(8,), resume=resume),
                                               progress=progress, log_line=progress.message)
            progress.close()
            server = cluster.devices[0]  # node id, address, host name
            click.echo(deploy_run(out, server, cluster.identity, name="household-demo"), err=True)
            asked = heldout_questions(questions)
            tuned = asyncio.run(_ask_all(server, cluster.identity, [q.prompt for q in asked]))
    except KeyboardInterrupt:
        progress.close()
        raise click.ClickException(f"stopped: the daemons were shut down{kept_checkpoint(out, 'pacctl demo')}") \
            from None
    except PacError as error:
        progress.close()
        raise click.ClickException(f"{error}{kept_checkpoint(out, 'pacctl demo')}") from error
    _report(controller, metrics, asked, tuned, count, started, out)


def _report(controller, metrics: dict, asked, tuned: list[str], count: int, started: float, out: Path) -> None:
    """Each held-out question's tuned answer (through the API) next to the untuned model's, and the score."""
    from pac.models.partial import load_partial
    from pac.train.generate import generate
    from pac.train.household import answer_is_right

    # The untuned model, read whole now (the controller held none); its config and tokenizer are parsed already.
    backbone = load_partial(controller.job.model.name_or_path, lambda whole: None)
    scores = {"untuned": 0, "tuned": 0}
    rows = []
    for question, after in zip(asked, tuned, strict=True):
        before = generate(backbone, question.prompt, None, max_new_tokens=ANSWER_TOKENS)
        scores["untuned"] += answer_is_right(before, question)
        scores["tuned"] += answer_is_right(after, question)
        rows.append({"question": question.prompt, "expected": question.answer, "untuned": before, "tuned": after})
        click.echo(f"\nQ: {question.prompt}\n  untuned: {before}\n  tuned:   {after}")
    working = len(controller.plan.devices) if controller.plan is not None else count
    summary = {"devices": count, "devices_used": working, "held_out_questions": len(asked),
               "right_untuned": scores["untuned"], "right_tuned": scores["tuned"],
               "training_time_s": metrics["total_time_s"], "total_time_s": time.perf_counter() - started}
    (out / "answers.json").write_text(json.dumps({"summary": summary, "answers": rows}, indent=2))
    click.echo(f"\nheld-out questions answered with the expected fact: tuned {scores['tuned']}/{len(asked)} (asked "
               f"through the Assistant API), untuned {scores['untuned']}/{len(asked)} ({summary['total_time_s']:.0f} "
               f"s; {working} of {count} device(s) took part, the plan's reason says why; "
               f"adapter, plan, metrics.json and plots in {out})")
