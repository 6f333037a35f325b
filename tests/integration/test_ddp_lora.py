"""The torchrun DDP LoRA baseline (bench/ddp_lora.py): 2 gloo ranks on tiny-bert train exactly what one
process trains on the same mini-batches: the all-reduced gradient is the whole mini-batch's mean-loss
gradient (the batch of 7 is split 4 / 3, so an unweighted rank average would differ), and the LoRA and
head parameters after two steps equal those of pac.train.finetune.run_finetune (the project's own loop)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from bench.ddp_lora import disable_dropout, prepare, rank_slices, run_ddp_lora
from pac.data.batching import collate
from pac.techniques.build import TechniqueConfig
from pac.train import finetune as job_module
from pac.train.loop import TrainConfig, batches
from tests.tolerance import adam_movement_bound, assert_rounding_close, assert_trained_close

SENTENCES = [
    ("The cat sat on the mat.", "A cat was sitting on the mat.", 1),
    ("Stocks fell sharply on Monday.", "The market rose on Monday.", 0),
    ("He bought a new car last week.", "Last week he purchased a new car.", 1),
    ("The meeting was cancelled.", "Rain is expected tomorrow.", 0),
    ("She plays the violin well.", "She is a skilled violinist.", 1),
    ("The bridge opened in 1932.", "The bridge was closed for repairs.", 0),
    ("Prices rose by ten percent.", "Prices went up 10 percent.", 1),
    ("The team lost the final.", "They won the championship.", 0),
    ("Our flight was delayed two hours.", "The flight left two hours late.", 1),
    ("The company hired fifty people.", "The firm laid off fifty workers.", 0),
    ("It snowed all night.", "Snow fell throughout the night.", 1),
    ("The museum is free on Sundays.", "Tickets cost twenty dollars.", 0),
    ("He finished the marathon.", "He completed the marathon race.", 1),
    ("The river flooded the town.", "The town is in a desert.", 0),
]
BATCH, SAMPLES, LR, SEQ_LEN, SEED = 7, 14, 1e-2, 64, 0


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"text": a, "text_pair": b, "label": y}) + "\n" for a, b, y in SENTENCES))
    return path


def test_rank_slices_are_contiguous_and_near_equal():
    assert rank_slices(7, 2) == [(0, 4), (4, 7)]
    assert rank_slices(16, 3) == [(0, 6), (6, 11), (11, 16)]
    assert rank_slices(1, 2) == [(0, 1), (1, 1)]


def test_two_ranks_train_what_one_process_trains(data_file, tmp_path, monkeypatch):
    state_path = tmp_path / "rank0.safetensors"
    row = run_ddp_lora(2, "tiny-bert", data_file, data_file, SAMPLES, 5, 1, BATCH, SEQ_LEN, LR, SEED,
                       threads=1, timeout_s=240, save_state=state_path, dropout=False)
    assert row["system"] == "ddp-lora" and row["devices"] == 2
    assert len(row["epoch_times_s"]) == 1 and row["epoch_times_s"][0] > 0
    assert len(row["peak_memory_bytes_per_device"]) == 2 and all(b > 0 for b in row["peak_memory_bytes_per_device"])
    assert set(row["final_metric"]) >= {"accuracy", "f1"}
    assert row["train_samples"] == SAMPLES and row["eval_samples"] == 5
    assert row["wall_time_s"] >= row["total_time_s"] > row["epoch_times_s"][0]
    saved = load_file(str(state_path))

    # The first step's all-reduced gradient is the single-process gradient of the whole mini-batch.
    model, pad_id, task, items, _ = prepare("tiny-bert", str(data_file), None, SAMPLES, None, SEQ_LEN, SEED)
    disable_dropout(model)
    model.train()
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    first = batches(items, BATCH, torch.Generator().manual_seed(SEED))[0]
    model(collate(first, pad_id, task)).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert set(grads) == {k.removeprefix("grad/") for k in saved if k.startswith("grad/")}
    assert any("lora_B" in name for name in grads) and any(name.startswith("head.") for name in grads)
    for name, grad in grads.items():
        # through 3 layers, each summing a weight gradient over the mini-batch's 7 x 64 token rows
        assert_rounding_close(saved[f"grad/{name}"], grad, depth=3 * BATCH * SEQ_LEN, msg=name)
    assert any(grad.abs().max() > 0 for grad in grads.values())

    # The parameters after two steps (clipping, AdamW, schedule) are those of the project's own loop.
    build = job_module.build_model

    def build_without_dropout(*args):
        built = build(*args)
        disable_dropout(built)
        return built

    monkeypatch.setattr(job_module, "build_model", build_without_dropout)
    job = job_module.FinetuneJob(model="tiny-bert", train_file=str(data_file), technique=TechniqueConfig("lora"),
                                 train=TrainConfig(epochs=1, batch_size=BATCH, learning_rate=LR, seed=SEED),
                                 seq_len=SEQ_LEN, train_limit=SAMPLES)
    reference = job_module.run_finetune(job, log=lambda *_: None)["model"]
    params = {name: p.detach() for name, p in reference.named_parameters() if p.requires_grad}
    trained = {k.removeprefix("param/"): v for k, v in saved.items() if k.startswith("param/")}
    steps = SAMPLES // BATCH
    bound = adam_movement_bound(LR, steps)
    assert_trained_close(trained, params, bound)
    for name in params:
        # every trainable tensor moved, far beyond the tolerance (lora_A only from the second step)
        assert (trained[name] - initial[name]).abs().max() > 0.1 * adam_movement_bound(LR, steps, 1), name
