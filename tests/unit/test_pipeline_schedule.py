"""The 1F1B schedule and the row splitting of micro-batches: pure code."""

import pytest
import torch

from pac.heads import IGNORE
from pac.pipeline.errors import PipelineError
from pac.pipeline.layers import LayerSlice, even_slices
from pac.pipeline.schedule import Op, max_in_flight, one_f_one_b
from pac.pipeline.split import loss_count, route, row_ranges, split_counts


def test_one_f_one_b_matches_pipedream_flush():
    schedule = one_f_one_b(3, 4)
    assert [str(op) for op in schedule[0]] == ["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3"]
    assert [str(op) for op in schedule[1]] == ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"]
    assert [str(op) for op in schedule[2]] == ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"]


@pytest.mark.parametrize("stages,micro", [(1, 1), (1, 5), (2, 1), (3, 2), (4, 8), (5, 3)])
def test_every_micro_batch_once_forward_before_backward_bounded_memory(stages, micro):
    for stage, ops in enumerate(one_f_one_b(stages, micro)):
        assert sorted(op.micro for op in ops if op.kind == "F") == list(range(micro))
        assert [op.micro for op in ops if op.kind == "B"] == list(range(micro))
        assert all(ops.index(Op("F", m)) < ops.index(Op("B", m)) for m in range(micro))
        assert max_in_flight(ops) == min(stages - stage, micro)


def test_schedule_rejects_empty():
    with pytest.raises(PipelineError, match="at least|>= 1"):
        one_f_one_b(0, 3)


def test_split_counts_and_routes():
    assert split_counts(10, 3) == (4, 3, 3)
    assert split_counts(4, (3, 1)) == (3, 1)
    assert split_counts(1, (1, 1)) == (1, 0)
    assert row_ranges(5, (2, 1, 2)) == ((0, 2), (2, 3), (3, 5))
    assert route(((0, 3), (3, 4)), ((0, 2), (2, 4))) == ((0, 0, 0, 2), (0, 1, 2, 3), (1, 1, 3, 4))
    with pytest.raises(PipelineError, match="shares"):
        split_counts(3, (0, 0))


def test_loss_count_weights_language_model_by_answer_tokens():
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6], [IGNORE, 7, IGNORE, IGNORE]])
    assert loss_count({"labels": labels}, "lm", "decoder") == 3  # shifted: position t predicts t + 1
    assert loss_count({"labels": labels}, "lm", "encoder-decoder") == 3
    assert loss_count({"labels": torch.tensor([0, 1, 1])}, "classification", "encoder") == 3


def test_layer_slices_cross_the_encoder_decoder_border():
    piece = LayerSlice(1, 3, (2, 2))
    assert [(s.stack, s.first, s.end) for s in piece.segments()] == [(0, 1, 2), (1, 0, 1)]
    assert [(s.first, s.end) for s in even_slices((2, 2), 3)] == [(0, 1), (1, 3), (3, 4)]
    with pytest.raises(Exception, match="non-empty range"):
        LayerSlice(2, 2, (3,))
