"""One replica of one pipeline stage: its backbone slice, its side slice and (last stage) the head.

This is what the daemon's Stage service holds. Per micro-batch it runs `forward` (receiving what the
previous stage sent) and later `backward` (receiving the gradients the next stage sent); gradients
accumulate over the mini-batch's micro-batches; then `gradients()` go to the group's AllReduce, the
pipeline-wide gradient norm is clipped, and `step()` updates the weights.

Loss scaling: the last stage multiplies each micro-batch's mean loss by (its samples or answer tokens) /
(those of the whole mini-batch), so the sum over micro-batches and replicas (AllReduce sums, it does not
average) is exactly the gradient of the single-process mini-batch mean.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from pac.heads import Head
from pac.pipeline.backbone_stage import BackboneStage, StageStates
from pac.pipeline.errors import PipelineError
from pac.pipeline.layers import LayerSlice
from pac.pipeline.messages import BACKWARD, ENCODER_HIDDEN, HIDDEN
from pac.pipeline.side_stage import DELTA, SideSlice
from pac.pipeline.split import loss_count
from pac.techniques.build import model_masks
from pac.train.loop import TrainConfig, apply_side_options, make_optimizer

AllReduce = Callable[[list[torch.Tensor]], None]  # in place: each tensor becomes the group's sum


class TrainableSlice(nn.Module):
    """The trained part of a stage, named like `ParallelAdaptersModel` ("side.*", "head.*", and on the last
    stage of a job tuning the backbone's top layers "top.layers.*")."""

    def __init__(self, side: SideSlice, head: Head | None, top: nn.Module | None = None) -> None:
        super().__init__()
        self.side, self.head, self.top = side, head, top

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What training changes: the side slice, the head, the tuned layers' LoRA factors (or weights),
        not the tuned layers' frozen weights."""
        from pac.techniques.top import trained_top_tensors

        tensors = {k: v for k, v in self.state_dict().items() if not k.startswith("top.")}
        return tensors | trained_top_tensors(self.top)


@dataclass
class _Pending:
    """A micro-batch between its forward and its backward."""

    inputs: dict[str, torch.Tensor]  # received tensors that need a gradient (leaves)
    outputs: dict[str, torch.Tensor]  # sent tensors, still attached to the graph
    loss: torch.Tensor | None  # last stage: the scaled loss


class StageWorker:
    def __init__(self, backbone: BackboneStage, side: SideSlice, head: Head | None, task: str,
                 on_states: Callable[[int, Mapping, StageStates, object], None] | None = None,
                 top: nn.Module | None = None) -> None:
        if backbone.layers != side.layers:
            raise PipelineError(f"backbone layers {backbone.layers} and side layers {side.layers} differ")
        if backbone.layers.is_last and head is None:
            raise PipelineError("the last stage needs the head")
        self.backbone, self.task = backbone, task
        self.module = TrainableSlice(side, head if backbone.layers.is_last else None, top)
        self.on_states = on_states  # e.g. write the activation cache: (micro, batch, states, info)
        self.pending: dict[int, _Pending] = {}
        self.optimizer = self.scheduler = None
        self.started = False

    @property
    def layers(self):
        return self.backbone.layers

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def start(self, config: TrainConfig, total_steps: int) -> None:
        """AdamW and the learning-rate schedule of pac.train.loop, over this stage's parameters."""
        torch.manual_seed(config.seed)
        apply_side_options(self.module.side, config)
        if self.parameters():  # a stage whose layers have no side block trains nothing
            self.optimizer, self.scheduler = make_optimizer(self.module, config, total_steps)
        self.module.train()
        self.started = True

    @property
    def frozen_layers(self) -> LayerSlice | None:
        """The stage's layers below the tuned top ones (all of them without any; None if every layer of
        the stage is tuned): what depends on the input alone and may run ahead of the training."""
        top, layers = self.module.top, self.layers
        if top is None or layers.end <= top.first:
            return layers
        return LayerSlice(layers.first, top.first, layers.stack_sizes) if layers.first < top.first else None

    def frozen(self, micro: int, batch: Mapping[str, torch.Tensor], inbound: Mapping[str, torch.Tensor],
               info=None) -> StageStates:
        """The frozen layers of the stage on micro-batch `micro`, no autograd; their states go to
        `on_states` (the cache record is whole: it keeps no state of a tuned layer). Its `outbound` is
        what the next stage (or the tuned layers) read. `info` is passed on to `on_states`."""
        layers = self.frozen_layers
        if layers is None:
            states = StageStates(taps={}, outbound={k: v for k, v in inbound.items() if k in (HIDDEN, ENCODER_HIDDEN)},
                                 encoder_final=inbound.get(ENCODER_HIDDEN))
        else:
            with torch.no_grad():
                states = self.backbone.run(batch, inbound, grad=False, layers=layers)
        if self.on_states is not None:
            self.on_states(micro, batch, states, info)
        return states

    def forward(self, micro: int, batch: Mapping[str, torch.Tensor], inbound: Mapping[str, torch.Tensor],
                loss_total: int, frozen: StageStates | None = None) -> dict[str, torch.Tensor]:
        """Run micro-batch `micro` (this replica's rows); returns what to send on (detached), or on the
        last stage {"loss": the scaled loss}. `loss_total`: samples or answer tokens of the mini-batch.

        `frozen`: the frozen layers' states computed ahead (`frozen()`); their hidden states were sent on
        then, so only the side network's are returned. Without it they run here first."""
        if micro in self.pending:
            raise PipelineError(f"micro-batch {micro} went forward twice before its backward")
        ahead = frozen is not None
        if frozen is None:
            frozen = self.frozen(micro, batch, inbound)
        states = frozen
        if self.module.top is not None and self.layers.is_last:  # the tuned top layers, with autograd
            first = max(self.layers.first, self.module.top.first)
            tuned = self.backbone.run(batch, frozen.outbound, grad=True,
                                      layers=LayerSlice(first, self.layers.end, self.layers.stack_sizes))
            states = StageStates({**frozen.taps, **tuned.taps}, final=tuned.final, encoder_final=tuned.encoder_final)
        leaves = {k: v.detach().requires_grad_() for k, v in inbound.items() if k in BACKWARD}
        side_out = self._side(states, batch, leaves)
        if self.layers.is_last:
            loss = self._scaled_loss(states.final + side_out[DELTA], batch, loss_total)
            self.pending[micro] = _Pending(leaves, {}, loss)
            return {"loss": loss.detach()}
        outputs = {k: v.view_as(v) if v.grad_fn is None else v for k, v in side_out.items()}
        self.pending[micro] = _Pending(leaves, outputs, None)
        return {**({} if ahead else states.outbound), **{k: v.detach() for k, v in outputs.items()}}

    def forward_states(self, micro: int, batch: Mapping[str, torch.Tensor],
                       inbound: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The backbone slice alone on micro-batch `micro`, no autograd (evaluation: its states go to
        `on_states`); returns what the next stage needs (the backbone's hidden states)."""
        with torch.no_grad():
            states = self.backbone.run(batch, inbound, grad=False)
        if self.on_states is not None:
            self.on_states(micro, batch, states, None)
        return dict(states.outbound)

    def _side(self, states: StageStates, batch, leaves: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        side = self.module.side
        if not side.spec.has_blocks:  # no side network: the last stage adds nothing, the others send nothing
            return {DELTA: 0.0} if self.layers.is_last else {}
        return side(states.taps, model_masks(batch, side.spec.family), leaves)

    def _scaled_loss(self, hidden: torch.Tensor, batch, loss_total: int) -> torch.Tensor:
        count = loss_count(batch, self.task, self.module.head.family)
        if count == 0:  # nothing to learn from these rows; keep the graph for the backward pass
            return hidden.sum() * 0.0
        return self.module.head(hidden, batch).loss * (count / loss_total)

    def backward(self, micro: int, grads: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Backward of micro-batch `micro` given the gradients of what it sent (none on the last stage);
        accumulates parameter gradients and returns the gradients to send to the previous stage."""
        pending = self.pending.pop(micro, None)
        if pending is None:
            raise PipelineError(f"backward of micro-batch {micro}, which has not gone forward on this stage")
        if pending.loss is not None:
            pending.loss.backward()
        else:
            missing = sorted(set(pending.outputs) - set(grads))
            if missing:
                raise PipelineError(f"backward of micro-batch {micro} lacks the gradient of {missing}")
            names = list(pending.outputs)
            torch.autograd.backward([pending.outputs[k] for k in names], [grads[k] for k in names])
        return {k: v.grad if v.grad is not None else torch.zeros_like(v) for k, v in pending.inputs.items()}

    def gradients(self) -> list[torch.Tensor]:
        """Every parameter's gradient in a fixed order (zeros where a replica had no rows): AllReduce them."""
        for p in self.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return [p.grad for p in self.parameters()]

    def reduce_gradients(self, allreduce: AllReduce) -> None:
        allreduce(self.gradients())

    def grad_square_norm(self) -> float:
        """This stage's share of the squared global gradient norm (after the AllReduce)."""
        return float(sum(g.double().pow(2).sum() for g in self.gradients()))

    def step(self, clip_coefficient: float = 1.0) -> None:
        """Scale the gradients (global norm clipping), step AdamW and the schedule, clear the gradients."""
        if not self.started:
            raise PipelineError("stage.start(config, total_steps) must run before the first step")
        if self.pending:
            raise PipelineError(f"step with micro-batches {sorted(self.pending)} still waiting for backward")
        if self.optimizer is None:
            return
        for g in self.gradients():
            g.mul_(clip_coefficient)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


def clip_coefficient(square_norms: list[float], max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_'s factor from every stage's squared norm."""
    total = sum(square_norms) ** 0.5
    return min(1.0, max_norm / (total + 1e-6))
