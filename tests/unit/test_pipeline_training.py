"""Training through the in-process pipeline equals single-process training (pac.train.loop)."""

import copy
import dataclasses
import math

import pytest
import torch

from pac.data.batching import encode_example
from pac.data.readers import Example
from pac.heads import HeadConfig
from pac.models.backbone import load_backbone
from pac.pipeline.build import build_stage, merged_state
from pac.pipeline.errors import PipelineError
from pac.pipeline.executor import InProcessPipeline, PipelineConfig, train_pipeline
from pac.pipeline.layers import even_slices
from pac.pipeline.transport import LocalGroup, run_members
from pac.side.network import SideConfig
from pac.techniques.build import TechniqueConfig, build_model
from pac.techniques.top import TopConfig, trained_tensors
from pac.train.loop import TrainConfig, train
from tests.tolerance import adam_movement_bound, assert_trained_close


def training_items(backbone, task, count):
    if task == "lm":  # answers of different lengths: the loss is a mean over answer tokens
        examples = [Example(prompt=f"what is {i}?", answer=f"it is {i * 7}" * (1 + i % 3)) for i in range(count)]
        return [encode_example(e, backbone.tokenizer, "lm", backbone.family, 48) for e in examples]
    examples = [Example(text=("good " if i % 2 else "bad ") * (1 + i % 3) + f"item{i}", label=i % 2)
                for i in range(count)]
    return [encode_example(e, backbone.tokenizer, "classification", backbone.family, 32) for e in examples]


def trained(model) -> dict[str, torch.Tensor]:
    return trained_tensors(model)


def compare(name, task, stages, shares, config, count, micro_batches=2, side_layers=None, moved_within=None,
            loss_rtol=1e-5, top=0):
    backbone = load_backbone(name)
    items = training_items(backbone, task, count)
    model = build_model(backbone, TechniqueConfig("parallel", side_layers=side_layers, top_layers=top),
                        HeadConfig(task))
    initial = copy.deepcopy(trained(model))
    expected_losses = train(model, items, task, 0, config).losses
    slices = even_slices(tuple(len(s) for s in backbone.stacks), stages)
    side = SideConfig(layers=side_layers, top_layers=top)
    workers = [[build_stage(load_backbone(name), piece, side, HeadConfig(task), state=initial, top=TopConfig(top))
                for _ in stage_shares] for piece, stage_shares in zip(slices, shares, strict=True)]
    pipeline = InProcessPipeline(workers, PipelineConfig(micro_batches, shares, 0, task))
    losses = train_pipeline(pipeline, items, config)
    torch.testing.assert_close(losses, expected_losses, rtol=loss_rtol, atol=1e-6)
    expected = trained(model)
    # Every replica of a stage holds the same tensors, equal to one process's: float sums in another
    # order differ in the last bits, which AdamW magnifies where a gradient is near zero (tolerance.py).
    steps = math.ceil(count / config.batch_size) * config.epochs
    movement = adam_movement_bound(config.learning_rate, steps)
    for stage in workers:
        for worker in stage:
            held = worker.module.trained_state()
            if moved_within is None:
                assert_trained_close(held, {key: expected[key] for key in held}, movement)
            else:  # the difference is a small fraction of how far training moved the tensor
                for key, value in held.items():
                    change = (expected[key] - initial[key]).norm()
                    assert (value - expected[key]).norm() <= moved_within * change + 1e-6, key
    assert set(merged_state([stage[0] for stage in workers])) == set(expected)
    moved = max((expected[k] - initial[k]).abs().max().item() for k in expected)
    assert moved > 1e-3  # training did change the weights: the comparison means something


ONE_STEP = TrainConfig(epochs=1, batch_size=6, learning_rate=1e-2, max_grad_norm=0.5)
SMALL_EPOCH = TrainConfig(epochs=2, batch_size=4, learning_rate=1e-2, max_grad_norm=0.5)


@pytest.mark.parametrize("name,task", [("tiny-bert", "classification"), ("tiny-llama", "lm"),
                                       ("tiny-t5", "lm"), ("tiny-bart", "classification")])
def test_two_stages_two_replicas_one_step(name, task):
    compare(name, task, 2, ((1, 1), (1, 1)), ONE_STEP, count=6)


@pytest.mark.parametrize("name,task", [("tiny-gpt2", "lm"), ("tiny-t5", "classification")])
def test_two_stages_two_replicas_small_epoch(name, task):
    compare(name, task, 2, ((1, 1), (1, 1)), SMALL_EPOCH, count=10)  # last mini-batch is short


@pytest.mark.parametrize("name,task", [("tiny-llama", "classification"), ("tiny-bart", "lm")])
def test_three_stages_one_replica(name, task):
    compare(name, task, 3, ((1,), (1,), (1,)), SMALL_EPOCH, count=8, micro_batches=3)


def test_stage_without_side_blocks_passes_the_side_state_through():
    compare("tiny-llama", "lm", 3, ((1,), (1, 1), (1,)), ONE_STEP, count=6, side_layers=(0, 2))


@pytest.mark.parametrize("name,task,side_layers", [("tiny-bert", "classification", None), ("tiny-llama", "lm", ()),
                                                   ("tiny-t5", "classification", None)])
def test_tuned_top_layers_train_in_the_last_stage_as_in_one_process(name, task, side_layers):
    """The last stage trains the tuned top layers (LoRA) beside its side blocks; with no side network
    (side_layers = []) the first stage only runs the frozen backbone forward."""
    compare(name, task, 2, ((1, 1), (1, 2)), SMALL_EPOCH, count=10, side_layers=side_layers, top=1)


def test_a_stage_cutting_the_tuned_top_layers_is_refused():
    backbone = load_backbone("tiny-llama")
    first, last = even_slices(tuple(len(s) for s in backbone.stacks), 2)
    with pytest.raises(PipelineError, match="cuts the tuned top layers"):
        build_stage(backbone, first, SideConfig(top_layers=2), HeadConfig("lm"), top=TopConfig(2))


def test_uneven_replicas_and_shares_reroute_rows():
    compare("tiny-t5", "lm", 3, ((3, 1), (1,), (1, 2)), ONE_STEP, count=6, micro_batches=2)


def test_replica_without_rows_still_joins_the_allreduce():
    compare("tiny-gpt2", "classification", 2, ((1, 1), (1,)), ONE_STEP, count=6, micro_batches=6)


def test_local_group_sums_in_place():
    group = LocalGroup(3)
    tensors = [[torch.full((2,), float(rank)), torch.tensor([rank + 1.0])] for rank in range(3)]
    run_members([lambda r=r: group.member(r)(tensors[r]) for r in range(3)])
    assert all(torch.equal(t[0], torch.full((2,), 3.0)) and t[1].item() == 6.0 for t in tensors)


def test_pipeline_checks_its_shape():
    worker = build_stage(load_backbone("tiny-bert"), even_slices((3,), 1)[0], SideConfig(),
                         HeadConfig("classification"))
    with pytest.raises(PipelineError, match="replicas per stage"):
        InProcessPipeline([[worker]], PipelineConfig(2, ((1, 1),)))
    with pytest.raises(PipelineError, match="start"):
        worker.step()


@pytest.mark.parametrize("name,task", [("tiny-llama", "lm"), ("tiny-t5", "classification")])
def test_bf16_side_arithmetic_through_the_pipeline_equals_one_process(name, task):
    """Stages pass the side state on in the dtype it was computed in, so a pipeline whose side network
    runs under bf16 autocast does one process's arithmetic, up to bf16 rounding where a micro-batch pads
    to its own length or gradients sum in another order (AdamW turns that into a whole step where a
    gradient is near zero): losses agree to 1e-3 and every tensor to 10% of how far it moved."""
    compare(name, task, 2, ((1, 1), (1, 1)), dataclasses.replace(SMALL_EPOCH, side_precision="bf16"), count=8,
            moved_within=0.1, loss_rtol=1e-3)
