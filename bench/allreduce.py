"""Ring AllReduce between daemons vs torch.distributed gloo, and tensor streaming per codec.

    .venv/bin/python -m bench.allreduce --world-sizes 2,3,4 --sizes 65536,1048576,4194304,16777216,67108864 \\
        --json bench/results/allreduce.json [--link 1gbit --latency 0.5ms]

For each world size a fresh set of daemons (bench.devserver: the same TensorStream/Collective servicers
as pacd, mutual TLS unless --no-tls) and a fresh gloo process group run float32 AllReduces of each size;
each timed operation follows a barrier, its time is the slowest rank's, and a row reports the median of
--iterations. Bus bandwidth = 2(n-1)/n * bytes / time. With --link every daemon and gloo worker runs in its
own network namespace behind a tc-shaped link (bench/netns.py) and rows carry the bound
2(n-1)/n * bytes / link rate. A streaming row times one 64 MiB tensor daemon to daemon per codec.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.common import write_report

MiB = 1024 * 1024


def _rate_bps(text: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bit": 1.0}
    for unit in ("kbit", "mbit", "gbit", "bit"):
        if text.lower().endswith(unit):
            return float(text[: -len(unit)]) * units[unit] / 8
    raise SystemExit(f"--link: cannot read rate {text!r}; write e.g. 1gbit or 500mbit")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- pac: daemons driven through Collective.AllReduce -----------------------------------------------
async def _pac_sizes(cluster, sizes: list[int], iterations: int, timeout_s: float) -> list[dict]:
    from pac.collective import RingGroup
    from pac.net.convert.collective import group_to_proto
    from pac.v1 import collective_pb2, collective_pb2_grpc

    members = tuple(cluster.addresses)
    channels = [cluster.channel(address) for address in members]
    stubs = [collective_pb2_grpc.CollectiveStub(channel) for channel in channels]
    rows, op_id = [], 0
    try:
        for size in sizes:
            timings = []
            for repeat in (1, iterations):  # a warm-up call, then the timed ones
                op_id += 1000
                requests = [
                    collective_pb2.AllReduceRequest(
                        group=group_to_proto(RingGroup("bench/allreduce", r, members, timeout_s)), op_id=op_id,
                        synthetic=collective_pb2.SyntheticTensors(numel=size // 4, dtype="float32", seed=size),
                        iterations=repeat)
                    for r in range(len(members))
                ]
                replies = await asyncio.gather(*[s.AllReduce(q, timeout=timeout_s * (repeat + 2))
                                                 for s, q in zip(stubs, requests, strict=True)])
                if len({round(r.checksum, 2) for r in replies}) != 1:
                    raise RuntimeError(f"ranks disagree on the sum at {size} bytes: {[r.checksum for r in replies]}")
                timings = [max(r.seconds[i] for r in replies) for i in range(repeat)]
            rows.append({"size": size, "times": timings})
    finally:
        for channel in channels:
            await channel.close()
    return rows


async def _pac_stream(cluster, codecs: list[str], nbytes: int, timeout_s: float) -> list[dict]:
    import torch

    from pac.net.convert.tensor import key_to_proto
    from pac.net.node import send_encoded
    from pac.v1 import tensor_pb2, tensor_pb2_grpc
    from pac.wire import encode

    source, target = cluster.addresses[:2]
    tensor = torch.randn(nbytes // 4)
    rows = []
    async with cluster.channel(source) as to_source, cluster.channel(target) as to_target:
        for step, codec in enumerate(codecs):
            header, payload = encode(tensor, job_id="bench", step=step, micro_batch=0, kind="hidden")
            await send_encoded(to_source, header, payload, timeout_s)
            key = key_to_proto("bench", step, 0, "hidden")
            reply = await tensor_pb2_grpc.TensorStreamStub(to_source).Relay(
                tensor_pb2.RelayRequest(key=key, target=target, codec=codec, timeout_s=timeout_s))
            async for _ in tensor_pb2_grpc.TensorStreamStub(to_target).Take(
                    tensor_pb2.TakeRequest(key=key, timeout_s=timeout_s, codec="int8")):
                pass
            rows.append({"codec": codec, "wire_bytes": reply.payload_bytes, "time_s": reply.seconds})
    return rows


# ---- gloo: one process per rank ---------------------------------------------------------------------
def gloo_worker(rank: int, world: int, master: str, sizes: list[int], iterations: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    host, port = master.rsplit(":", 1)
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=rank, world_size=world)
    try:
        for size in sizes:
            tensor = torch.randn(size // 4)
            times = []
            for iteration in range(iterations + 1):
                work = tensor.clone()
                dist.barrier()
                started = time.perf_counter()
                dist.all_reduce(work)
                elapsed = torch.tensor([time.perf_counter() - started], dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                if iteration > 0:  # the first is a warm-up
                    times.append(float(elapsed))
            if rank == 0:
                print(json.dumps({"size": size, "times": times}), flush=True)
    finally:
        dist.destroy_process_group()


def _gloo_sizes(world: int, sizes: list[int], iterations: int, net, timeout_s: float) -> list[dict]:
    if net is None:
        master, prefixes, envs = f"127.0.0.1:{_free_port()}", [[]] * world, [{"GLOO_SOCKET_IFNAME": "lo"}] * world
    else:
        master = f"{net.hosts[0]}:29511"
        prefixes = [net.prefix(i) for i in range(world)]
        envs = [{"GLOO_SOCKET_IFNAME": net.devices[i]} for i in range(world)]
    processes = []
    try:
        for rank in range(world):
            command = [*prefixes[rank], sys.executable, "-m", "bench.allreduce", "--gloo-worker", str(rank),
                       "--world", str(world), "--master", master, "--sizes", ",".join(map(str, sizes)),
                       "--iterations", str(iterations)]
            processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                              env={**os.environ, **envs[rank], "OMP_NUM_THREADS": "1"}))
        output, _ = processes[0].communicate(timeout=timeout_s)
        for process in processes[1:]:
            process.wait(timeout=30)
        if any(process.returncode for process in processes):
            raise RuntimeError(f"a gloo worker failed: {[p.returncode for p in processes]}")
        return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


# ---- driver -----------------------------------------------------------------------------------------
def _row(impl: str, world: int, size: int, times: list[float], link_Bps: float | None) -> dict:
    median = statistics.median(times)
    bus = 2 * (world - 1) / world * size
    row = {"impl": impl, "world_size": world, "bytes": size, "time_s": median, "times_s": times,
           "bus_bandwidth_Bps": bus / median if median > 0 else None}
    if link_Bps:
        row["bound_s"] = bus / link_Bps
        row["time_over_bound"] = median / row["bound_s"] if row["bound_s"] else None
    return row


def run(args) -> dict:
    from bench.devserver import DevCluster

    world_sizes = [int(w) for w in args.world_sizes.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    link_Bps = _rate_bps(args.link) if args.link else None
    rows: list[dict] = []
    started = time.monotonic()
    for world in world_sizes:
        with ExitStack() as stack:
            net = None
            if args.link:
                from bench.netns import EmulatedNetwork

                net = stack.enter_context(EmulatedNetwork(world, args.link, args.latency))
            tls_dir = Path(stack.enter_context(tempfile.TemporaryDirectory())) if args.tls else None
            cluster = stack.enter_context(DevCluster(
                world, tls_dir=tls_dir, hosts=net.hosts if net else None,
                prefixes=[net.prefix(i) for i in range(world)] if net else None))
            for result in asyncio.run(_pac_sizes(cluster, sizes, args.iterations, args.timeout)):
                rows.append(_row("pac", world, result["size"], result["times"], link_Bps))
                print(json.dumps(rows[-1]), flush=True)
            if world == 2 and args.stream_bytes:
                for result in asyncio.run(_pac_stream(cluster, ["none", "fp16", "int8"], args.stream_bytes,
                                                      args.timeout)):
                    rows.append({"impl": "pac", "kind": "stream", "world_size": 2, "bytes": args.stream_bytes,
                                 "codec": result["codec"], "wire_bytes": result["wire_bytes"],
                                 "time_s": result["time_s"], "throughput_Bps": args.stream_bytes / result["time_s"]})
                    print(json.dumps(rows[-1]), flush=True)
            cluster.stop()
            for result in _gloo_sizes(world, sizes, args.iterations, net, args.timeout * len(sizes) * 4):
                rows.append(_row("gloo", world, result["size"], result["times"], link_Bps))
                print(json.dumps(rows[-1]), flush=True)
    config = {"world_sizes": world_sizes, "sizes": sizes, "dtype": "float32", "iterations": args.iterations,
              "link": args.link or "loopback", "latency": args.latency, "tls": args.tls,
              "latency_emulated": bool(args.link and args.latency and net and net.latency_emulated),
              "stream_bytes": args.stream_bytes, "daemons": "bench.devserver processes, one per rank",
              "total_run_s": round(time.monotonic() - started, 1)}
    return write_report(args.json, "allreduce", config, rows)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("kind") != "stream"]
    worlds = sorted({r["world_size"] for r in rows})
    figure, axes = plt.subplots(1, len(worlds), figsize=(5 * len(worlds), 4), sharey=True, squeeze=False)
    for axis, world in zip(axes[0], worlds, strict=True):
        for impl, style in (("pac", "o-"), ("gloo", "s--")):
            points = sorted((r["bytes"], r["bus_bandwidth_Bps"] / 1e6) for r in rows
                            if r["impl"] == impl and r["world_size"] == world)
            axis.plot([p[0] for p in points], [p[1] for p in points], style, label=impl)
        if report["config"]["link"] != "loopback":
            axis.axhline(_rate_bps(report["config"]["link"]) / 1e6, color="grey", linestyle=":", label="link rate")
        axis.set_xscale("log", base=2)
        axis.set_title(f"{world} ranks, {report['config']['link']}, tls={report['config']['tls']}")
        axis.set_xlabel("bytes (float32)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("bus bandwidth (MB/s)")
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.allreduce", description=__doc__.split("\n")[0])
    parser.add_argument("--world-sizes", default="2,3,4")
    parser.add_argument("--sizes", default="65536,1048576,4194304,16777216,67108864")
    parser.add_argument("--json", default="bench/results/allreduce.json")
    parser.add_argument("--plot", default=None, help="PNG path (default: the --json path with .png)")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--link", default=None, help="run on the emulated network at this rate, e.g. 1gbit")
    parser.add_argument("--latency", default=None, help="one-way link latency on the emulated network, e.g. 0.5ms")
    parser.add_argument("--no-tls", dest="tls", action="store_false")
    parser.add_argument("--stream-bytes", type=int, default=64 * MiB)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--gloo-worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--master", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gloo_worker is not None:
        gloo_worker(args.gloo_worker, args.world, args.master, [int(s) for s in args.sizes.split(",")],
                    args.iterations)
        return 0
    report = run(args)
    plot(report, Path(args.plot or Path(args.json).with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
