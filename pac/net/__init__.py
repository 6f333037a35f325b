"""gRPC edges of tensor streaming and collectives: clients, receive buffers and the ring transport.

The training code running in a daemon talks to one `PeerNode` (pac/net/node.py):

    node = node_for(daemon)
    await node.send_tensor("10.0.0.7:7443", h, job_id=job, step=s, micro_batch=m, kind="hidden", codec="fp16")
    h = await node.receive_tensor(job, s, m, "hidden", timeout_s=30)
    grads = await node.allreduce(grads, group, op_id=s)
"""
