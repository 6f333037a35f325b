"""The device worker: what a daemon does for a training job, with no gRPC in it.

`stage.StageReplica` is one phase-1 stage replica, `phase2.Phase2Member` one phase-2 member,
`device_job.DeviceJob` the job this device holds (its stage, cache shard, phase-2 member, lease) and
`slot.JobSlot` the one place that holds it (no PyTorch until a job opens it). `spec` holds what the controller sends them and
`tensors` how their tensors travel. The daemon's Stage servicer (pacd/services/stage_servicer.py) converts
requests (pac/net/convert/stage.py) into calls on these; they reach other devices only through a
`stage.Transport` (pac/net/peer_transport.py over gRPC). docs/runtime.md draws the whole path.
"""
