"""Build one stage replica from a loaded backbone: what a stage device does when the job starts."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pac.heads import Head, HeadConfig
from pac.models.backbone import Backbone
from pac.pipeline.backbone_stage import BackboneStage
from pac.pipeline.layers import LayerSlice
from pac.pipeline.side_stage import SideSlice
from pac.pipeline.stage import StageWorker
from pac.side.network import SideConfig, SideNetwork, side_spec
from pac.side.pruning import init_by_pruning


def build_stage(backbone: Backbone, layers: LayerSlice, side_config: SideConfig, head_config: HeadConfig,
                state: Mapping[str, torch.Tensor] | None = None, release: bool = True, **worker) -> StageWorker:
    """A stage replica of `backbone` (which it takes over).

    `state`: the job's initial trained tensors ("side.*" and "head.*", as every replica and stage must
    start from the same ones). Without it the side network is initialised here by structural pruning,
    which reads every layer, so it must happen before the layers outside the stage are released, and is
    deterministic: every stage device computes the same initial side network and head only if the head's
    random initialisation is seeded alike (the controller should rather send `state`)."""
    spec = side_spec(backbone, side_config)
    side = SideSlice(spec, layers)
    full = None
    if state is None:
        full = init_by_pruning(SideNetwork(spec).to(backbone.device), backbone).state_dict()
    stage = BackboneStage(backbone, layers, release=release, lm_head=head_config.task == "lm")
    side.to(backbone.device, backbone.trainable_dtype)
    side.load_full_state_dict(full if full is not None else _strip(state, "side."))
    head = None
    if layers.is_last:
        head = Head(head_config, backbone.hidden_size, backbone.family, stage.lm_head)
        head.to(backbone.device, backbone.trainable_dtype)
        if state is not None:
            head.load_state_dict(_strip(state, "head."))
    return StageWorker(stage, side, head, head_config.task, **worker)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def merged_state(stages: list[StageWorker]) -> dict[str, torch.Tensor]:
    """The full model's trained tensors ("side.*", "head.*") from one replica of every stage."""
    merged: dict[str, torch.Tensor] = {}
    for stage in stages:
        merged.update(stage.module.state_dict())
    return merged
