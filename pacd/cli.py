"""`pacd`: the device daemon's command line. `main(argv) -> int`; one line per error, tracebacks with --debug."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from pathlib import Path

# While a stage waits for a peer, torch's OpenMP threads would spin and take the cores the daemon's own
# network I/O (and, on a shared machine, other daemons) need; set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pac.errors import PacError
from pacd.config import DEFAULT_CONFIG_PATH, DaemonConfig, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pacd", description="PAC device daemon.")
    parser.add_argument("--debug", action="store_true", help="print tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"pacd {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the daemon (systemd runs this)")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="TCP port; 0 picks a free one (default 7443)")
    serve.add_argument("--memory-budget", help="memory offered to jobs, e.g. 4GiB (default: half of RAM)")
    serve.add_argument("--insecure", action="store_true", default=None,
                       help="no TLS, no pairing: loopback development only")
    serve.add_argument("--no-mdns", dest="mdns", action="store_false", default=None, help="do not advertise")
    serve.add_argument("--mdns-interface", dest="mdns_interfaces", action="append",
                       help="interface address to advertise on (repeatable; default all)")
    serve.add_argument("--warm-up", dest="warm_up", action="store_true", default=None,
                       help="import the training code in the background at start: the first job starts a few "
                            "seconds sooner, the idle daemon holds PyTorch (about 340 MB more)")
    serve.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                       help="import the training code only when a job needs it (the default)")
    serve.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    serve.add_argument("--wyoming", action="store_true", default=None,
                       help="serve the tuned model to Home Assistant over Wyoming (plain TCP, no authentication)")
    serve.add_argument("--wyoming-port", type=int, help="Wyoming port (default 10800; 0 picks a free one)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       help="least severe log lines written (default info)")
    info = commands.add_parser("info", help="print this device's node id, pairing state and pairing code")
    _common(info)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pac")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--state-dir", type=Path, help="state directory (default /var/lib/pacd)")


def _config(args: argparse.Namespace) -> DaemonConfig:
    keys = ("host", "port", "state_dir", "memory_budget", "insecure", "mdns", "mdns_interfaces", "port_file",
            "log_level", "warm_up", "wyoming", "wyoming_port")
    return load_config(args.config, {k: getattr(args, k, None) for k in keys})


def _serve(config: DaemonConfig) -> int:
    if not config.insecure:
        from pacd import handshakes

        handshakes.capture()  # a refused TLS handshake is logged naming its peer
    from pacd.daemon import Daemon

    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def out(line: str) -> None:
        print(line, flush=True)

    async def run() -> int:
        return await Daemon(config, out).run()

    return asyncio.run(run())


def _info(config: DaemonConfig) -> int:
    from pac.security import is_paired, load_identity
    from pacd.state import StateDir

    state = StateDir.open(config.state_dir)
    print(f"node id:    {state.node_id()}")
    if is_paired(state.root):
        print(f"cluster id: {load_identity(state.root).cluster_id}")
    else:
        code = state.root / "pairing-code"
        print("not paired" + (f"; pairing code: {code.read_text().strip()}" if code.exists() else
                              "; start 'pacd serve' to get a pairing code"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        return _serve(config) if args.command == "serve" else _info(config)
    except (PacError, OSError, RuntimeError) as error:
        if args.debug:
            traceback.print_exc()
        print(f"pacd: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
