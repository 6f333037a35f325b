"""One fine-tuning run in a fresh process, with its time per sample and peak memory per phase.

Every run starts from the same memory and none sees another's (bench.accuracy's rows).
"""

from __future__ import annotations

import sys


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _measured(job, test_file: str | None, seq_len: int, eval_limit, seed: int, queue) -> None:
    """In a fresh process: train `job`, and report its scores, time per sample and peak memory per
    phase (epoch 1; epochs 2.. from the cache), RSS above this process's after-imports RSS."""
    import torch

    from bench.common import peak_rss_bytes, reset_peak_rss, rss_bytes
    from pac.data.batching import encode_example
    from pac.data.prepare import subset
    from pac.data.readers import read_examples
    from pac.train.finetune import run_finetune
    from pac.train.loop import evaluate

    torch.set_num_threads(torch.get_num_threads())
    base = rss_bytes()
    reset_peak_rss()
    peaks = {}

    def on_step(info) -> None:
        if info.epoch >= 1 and "epoch1" not in peaks:  # the first step of epoch 2 has just run
            peaks["epoch1"] = peak_rss_bytes() - base
            reset_peak_rss()

    result = run_finetune(job, log=_log, on_step=on_step)
    if "epoch1" in peaks:
        peaks["later"] = peak_rss_bytes() - base
    else:
        peaks["epoch1"] = peak_rss_bytes() - base
    test = None
    if test_file is not None:
        model = result["model"]
        if model.backbone is None:  # released for the epochs from the cache: the frozen one again
            from pac.train.finetune import _load

            model.backbone = _load(job)
        tokenizer, family = model.backbone.tokenizer, model.backbone.family
        examples = subset(read_examples(test_file), eval_limit, seed)
        items = [encode_example(e, tokenizer, "classification", family, seq_len, i) for i, e in enumerate(examples)]
        test = evaluate(model, items, "classification", tokenizer.pad_token_id)
    times = result["epoch_times_s"]
    n = result["train_examples"]
    queue.put({"eval": result["eval"], "test": test, "history": result["eval_history"],
               "epoch_times_s": times, "train_examples": n, "trainable_params": result["trainable_params"],
               "epoch1_ms_per_sample": times[0] / n * 1e3,
               "later_ms_per_sample": sum(times[1:]) / len(times[1:]) / n * 1e3 if len(times) > 1 else None,
               "epoch1_peak_bytes": peaks["epoch1"], "later_peak_bytes": peaks.get("later"),
               "cache": result["cache"]})


def in_fresh_process(target, *args, what: str = "the measured run") -> dict:
    """`target(*args, queue)` in a spawned process, and what it put on the queue (every run starts from the
    same memory, none sees another's)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    try:
        out = queue.get()
    finally:
        process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{what} failed (exit {process.exitcode})")
    return out


def measured_run(job, test_file: str | None = None, seq_len: int = 128, eval_limit=None, seed: int = 0) -> dict:
    """`_measured` in a spawned process."""
    return in_fresh_process(_measured, job, test_file, seq_len, eval_limit, seed)
