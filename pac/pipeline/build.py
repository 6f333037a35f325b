"""Build one stage replica from a loaded backbone: what a stage device does when the job starts."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pac.heads import Head, HeadConfig
from pac.models.backbone import Backbone
from pac.pipeline.backbone_stage import BackboneStage
from pac.pipeline.errors import PipelineError
from pac.pipeline.layers import LayerSlice
from pac.pipeline.side_stage import SideSlice
from pac.pipeline.stage import StageWorker
from pac.side.network import SideConfig, SideNetwork, side_spec
from pac.side.pruning import init_by_pruning
from pac.techniques.top import TopConfig, load_top_tensors


def build_stage(backbone: Backbone, layers: LayerSlice, side_config: SideConfig, head_config: HeadConfig,
                state: Mapping[str, torch.Tensor] | None = None, release: bool = True, top: TopConfig | None = None,
                **worker) -> StageWorker:
    """A stage replica of `backbone` (which it takes over).

    `top`: the backbone's last layers tuned too (pac.techniques.top); they all belong to the last stage,
    which trains them ("top.layers.*" in `state`: their LoRA factors or weights).

    `state`: the job's initial trained tensors ("side.*" and "head.*", as every replica and stage must
    start from the same ones). Without it the side network is initialised here by structural pruning,
    which reads every layer, so it must happen before the layers outside the stage are released, and is
    deterministic: every stage device computes the same initial side network and head only if the head's
    random initialisation is seeded alike (the controller should rather send `state`)."""
    top = top or TopConfig()
    if top.count != side_config.top_layers:
        raise PipelineError(f"the side network is shaped for {side_config.top_layers} tuned top layers, "
                            f"the stage was asked to tune {top.count}")
    spec = side_spec(backbone, side_config)
    side = SideSlice(spec, layers)
    full = None
    if state is None:
        full = init_by_pruning(SideNetwork(spec).to(backbone.device), backbone).state_dict()
    tuned = None
    if top.count:
        first_tuned = layers.num_layers - top.count
        if layers.is_last and layers.first > first_tuned or not layers.is_last and layers.end > first_tuned:
            raise PipelineError(f"stage [{layers.first}, {layers.end}) cuts the tuned top layers [{first_tuned}, "
                                f"{layers.num_layers}): they must all be in the last stage")
        if layers.is_last:
            tuned = top.build(backbone)  # LoRA in the backbone's own modules, before the stage drops any layer
            if state is not None:
                load_top_tensors(tuned, dict(state), f"stage [{layers.first}, {layers.end})")
    stage = BackboneStage(backbone, layers, release=release, lm_head=head_config.task == "lm")
    side.to(backbone.device, backbone.trainable_dtype)
    side.load_full_state_dict(full if full is not None else _strip(state, "side."))
    if not spec.has_blocks:
        side.requires_grad_(False)  # no side network (`side_layers = []`): nothing reads it
    head = None
    if layers.is_last:
        head = Head(head_config, backbone.hidden_size, backbone.family, stage.lm_head)
        head.to(backbone.device, backbone.trainable_dtype)
        if state is not None:
            head.load_state_dict(_strip(state, "head."))
    return StageWorker(stage, side, head, head_config.task, top=tuned, **worker)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def merged_state(stages: list[StageWorker]) -> dict[str, torch.Tensor]:
    """The full model's trained tensors ("side.*", "head.*", "top.layers.*") from one replica of every stage."""
    merged: dict[str, torch.Tensor] = {}
    for stage in stages:
        merged.update(stage.module.trained_state())
    return merged
