"""Name the peer of every refused TLS handshake in pacd's log.

gRPC's Python API has no hook for a failed handshake: its C core drops the connection and logs a line
without the peer's address ("Handshake failed with error SSL_ERROR_SSL: ... PEER_DID_NOT_RETURN_A_
CERTIFICATE"). With the core's `handshaker` trace on, every handshake step is written with the
connection's peer address, so pacd reads what the core writes to stderr through a pipe, turns each
failed handshake on its server side into one log line

    refused a TLS connection from 192.168.1.20:53122: it sent no client certificate (not paired with this home?)

(at most one a minute per peer host and reason, with a count of those left out; a peer that gives up
the handshake itself, as a pairing controller checking this device's certificate does, at info level), drops the trace's other lines and
passes everything else through unchanged. Python's own log lines do not go through the pipe.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time

log = logging.getLogger("pacd.tls")

TRACE = "handshaker"  # GRPC_TRACE value that makes the core name each handshake's peer
_PEER = re.compile(r"endpoint_peer_address=(?:ipv4:|ipv6:)?([^,}]+)")
_ERROR = re.compile(r"CallNextHandshakerLocked: error=(.*?)(?: shutdown=|$)", re.S)
# What the TLS library says -> what a person can act on.
REASONS = (
    ("WRONG_VERSION_NUMBER", "it does not speak TLS (a client in --insecure mode?)"),
    ("HTTP_REQUEST", "it does not speak TLS (a client in --insecure mode?)"),
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "it sent no client certificate (not paired with this home?)"),
    ("CERTIFICATE_VERIFY_FAILED", "its certificate is not signed by this home's authority (another home?)"),
)
# The peer gave up, nothing was refused (a pairing controller checking this device's certificate does):
CLOSED = (("TLSV1_ALERT_UNKNOWN_CA", "it does not trust this device's certificate (another home?)"),
          ("Socket closed", "it closed the connection during the handshake"))
RATE_S = 60.0


def _is_trace(text: str) -> bool:
    return ("handshaker.cc" in text or "handshake manager" in text or "gRPC Tracers" in text
            or ("ssl_transport_security" in text and "Handshake failed" in text))


def reason(error: str) -> tuple[str, bool]:
    """(what a person can act on, whether this device refused: False when the peer gave up)."""
    for marker, text in REASONS:
        if marker in error:
            return text, True
    for marker, text in CLOSED:
        if marker in error:
            return text, False
    code = re.search(r"OPENSSL_internal:([A-Z0-9_]+)", error)
    return (f"the TLS handshake failed ({code.group(1)})" if code else error.strip().splitlines()[0][:200]), True


def parse(record: str) -> tuple[str, str, bool] | None:
    """A handshaker trace record (its lines joined) -> (peer address, reason, refused) when it is a
    failed server-side handshake, else None."""
    match = _ERROR.search(record)
    if match is None or match.group(1).startswith("OK") or "server_credentials" not in record:
        return None
    peer = _PEER.search(record)
    return (peer.group(1) if peer else "an unknown address"), *reason(match.group(1))


SEVERITIES = "DIWEF"  # the first letter of a core log line: debug, info, warning, error, fatal
_CORE_LINE = re.compile(r"[DIWEF]\d{4} ")
MAX_RECORD_LINES = 40


class HandshakeLog:
    """Reads the core's stderr lines; writes the refusals as log lines and the rest to `out` (core lines
    less severe than `verbosity`, the level the user asked of gRPC, left out)."""

    def __init__(self, out, clock=time.monotonic, verbosity: str = "INFO") -> None:
        self.out, self.clock = out, clock
        self.floor = SEVERITIES.index(verbosity[:1].upper()) if verbosity[:1].upper() in SEVERITIES else 1
        self.pending: str | None = None  # a failed step's record, until its arguments (with the peer) end it
        self.passing = True  # whether the lines continuing the last core line are written
        self.last: dict[tuple[str, str], tuple[float, int]] = {}  # (host, reason) -> (logged, left out)

    def line(self, text: str) -> None:
        if not _CORE_LINE.match(text):  # a continuation of the last core line (a multi-line message)
            if self.pending is not None:
                self.pending += text
                if text.startswith(" shutdown=") or self.pending.count("\n") >= MAX_RECORD_LINES:
                    self._finish()
            elif self.passing:
                self._write(text)
            return
        self._finish()
        self.passing = False
        if "CallNextHandshakerLocked" in text and "error=OK" not in text:
            self.pending = text
            if " shutdown=" in text:
                self._finish()
        elif _is_trace(text):
            pass  # the handshake trace, or the core's own line for a refusal (without the peer)
        elif SEVERITIES.index(text[:1]) >= self.floor:
            self.passing = True
            self._write(text)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _finish(self) -> None:
        if self.pending is not None:
            record, self.pending = self.pending, None
            self._record(record)

    def _record(self, record: str) -> None:
        parsed = parse(record)
        if parsed is None:
            return
        peer, why, refused = parsed
        host = peer.rsplit(":", 1)[0]
        now = self.clock()
        logged, left_out = self.last.get((host, why), (None, 0))
        if logged is not None and now - logged < RATE_S:
            self.last[(host, why)] = (logged, left_out + 1)
            return
        more = f" ({left_out} more like it from {host} in the last minute)" if left_out else ""
        if refused:
            log.warning("refused a TLS connection from %s: %s%s", peer, why, more)
        else:
            log.info("a TLS handshake from %s did not finish: %s%s", peer, why, more)
        self.last[(host, why)] = (now, 0)


def capture() -> None:
    """Turn the core's handshake trace on and read its stderr (call before grpc is imported).

    Python's `sys.stderr` (and so its logging) is moved to a copy of the original stream, so a log line
    never waits on the pipe; the core writes into the pipe, which a daemon thread empties."""
    if "grpc" in sys.modules:
        raise RuntimeError("pacd.handshakes.capture() must run before grpc is imported")
    traces = [t for t in os.environ.get("GRPC_TRACE", "").split(",") if t]
    os.environ["GRPC_TRACE"] = ",".join([*traces, TRACE]) if TRACE not in traces else ",".join(traces)
    verbosity = os.environ.get("GRPC_VERBOSITY", "INFO")
    os.environ["GRPC_VERBOSITY"] = "DEBUG" if verbosity[:1].upper() == "D" else "INFO"  # traces log at INFO
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = os.fdopen(original, "w", buffering=1, encoding="utf-8", errors="replace")
    reader = HandshakeLog(sys.stderr, verbosity=verbosity)

    def pump() -> None:
        with os.fdopen(read_end, "r", encoding="utf-8", errors="replace") as lines:
            for text in lines:
                try:
                    reader.line(text)
                except Exception:  # never stop emptying the pipe: the core would block on a full one
                    sys.stderr.write(text)

    threading.Thread(target=pump, name="pacd-tls-log", daemon=True).start()
