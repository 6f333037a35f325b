"""`pacctl demo`: the built-in default job, run on this device."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from pac.errors import PacError


@click.command("demo")
@click.option("--model", default="smollm2-135m", show_default=True, help="A chat model (decoder or encoder-decoder).")
@click.option("--epochs", type=int, default=8, show_default=True)
@click.option("--lr", "learning_rate", type=float, default=2e-3, show_default=True)
@click.option("--questions", type=int, default=8, show_default=True, help="Held-out questions to ask (max 32).")
@click.option("--out", "output_dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
def command(model, epochs, learning_rate, questions, output_dir) -> None:
    """Fine-tune a chat model with Parallel Adapters on a built-in household dataset, then ask it
    held-out questions and print its answers next to the untuned model's."""
    from pac.techniques.build import TechniqueConfig
    from pac.train.generate import generate
    from pac.train.household import TRAIN_FILE, answer_is_right, heldout_questions
    from pac.train.job import FinetuneJob, run_job
    from pac.train.loop import TrainConfig

    started = time.perf_counter()
    job = FinetuneJob(model=model, train_file=str(TRAIN_FILE), task="lm", seq_len=96,
                      technique=TechniqueConfig("parallel"), output_dir=output_dir, cache_precision="fp16",
                      cache_dir=str(Path(output_dir) / "cache"),
                      train=TrainConfig(epochs=epochs, batch_size=8, learning_rate=learning_rate))
    try:
        result = run_job(job, log=lambda line: click.echo(line, err=True))
    except PacError as error:
        raise click.ClickException(str(error)) from error
    from pac.models.backbone import load_backbone

    tuned = result["model"]
    backbone = tuned.backbone or load_backbone(model)  # released after epoch 1 when training from the cache
    scores = {"untuned": 0, "tuned": 0}
    asked = heldout_questions(questions)
    rows = []
    for question in asked:
        before = generate(backbone, question.prompt, None, max_new_tokens=24)
        after = generate(backbone, question.prompt, tuned, max_new_tokens=24)
        scores["untuned"] += answer_is_right(before, question)
        scores["tuned"] += answer_is_right(after, question)
        rows.append({"question": question.prompt, "expected": question.answer, "untuned": before, "tuned": after})
        click.echo(f"\nQ: {question.prompt}\n  untuned: {before}\n  tuned:   {after}")
    summary = {"held_out_questions": len(asked), "right_untuned": scores["untuned"],
               "right_tuned": scores["tuned"], "total_time_s": time.perf_counter() - started}
    Path(output_dir, "answers.json").write_text(json.dumps({"summary": summary, "answers": rows}, indent=2))
    click.echo(f"\nheld-out questions answered with the expected fact: tuned {scores['tuned']}/{len(asked)}, "
               f"untuned {scores['untuned']}/{len(asked)} ({summary['total_time_s']:.0f} s; "
               f"adapter in {output_dir}/adapter.safetensors)")
