"""Phase 1 of PAC as library code: pipeline stages, the 1F1B schedule and an in-process executor.

See docs/pipeline.md. Nothing here does I/O; the daemon's Stage service and the controller move the
tensors these objects produce.
"""

from pac.pipeline.backbone_stage import BackboneStage, StageStates
from pac.pipeline.build import build_stage, merged_state
from pac.pipeline.errors import PipelineError
from pac.pipeline.executor import InProcessPipeline, PipelineConfig, train_pipeline
from pac.pipeline.layers import LayerSlice, Segment, even_slices
from pac.pipeline.schedule import Op, one_f_one_b
from pac.pipeline.side_stage import SideSlice
from pac.pipeline.stage import AllReduce, StageWorker, clip_coefficient

__all__ = [
    "AllReduce", "BackboneStage", "InProcessPipeline", "LayerSlice", "Op", "PipelineConfig", "PipelineError",
    "Segment", "SideSlice", "StageStates", "StageWorker", "build_stage", "clip_coefficient", "even_slices",
    "merged_state", "one_f_one_b", "train_pipeline",
]
