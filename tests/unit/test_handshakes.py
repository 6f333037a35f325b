"""pacd's reading of gRPC's handshake trace: a refused TLS connection becomes one line naming its peer."""

from __future__ import annotations

import io
import logging

from pacd.handshakes import HandshakeLog, parse

ARGS = ("args={{endpoint=0x7f, args={{grpc.internal.endpoint_local_address=ipv4:127.0.0.1:7443, "
        "grpc.internal.endpoint_peer_address=ipv4:{peer}, grpc.internal.security_connector=0x5, "
        "grpc.internal.server_credentials=0x5}}, read_buffer.Length()=0, exit_early=0}}\n")
PREFIX = "I1204 19:08:07.151900    2608 handshaker.cc:155] CallNextHandshakerLocked: error="


def failed(peer: str, ssl: str) -> list[str]:
    """What the core writes for one refused connection (the error message ends its first line)."""
    return [
        f"I1204 19:08:07.151890    2608 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: {ssl}\n",
        f"{PREFIX}UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: {ssl}\n",
        "=== Source Location Trace: ===\n", "src/core/util/status_helper.cc:124\n",
        " shutdown=false index=2, " + ARGS.format(peer=peer),
        "I1204 19:08:07.151904    2608 channel_trace.h:396] handshake manager 0x7f: Failed with error: UNKNOWN\n",
        "=== Source Location Trace: ===\n", "src/core/util/status_helper.cc:68\n", "\n",
        "I1204 19:08:07.2 2608 handshaker.cc:80] handshake_manager 0x7f: adding handshaker tcp_connect at index 0\n",
    ]


def test_a_refused_connection_is_one_warning_naming_peer_and_reason(caplog):
    out = io.StringIO()
    reader = HandshakeLog(out, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="pacd.tls"):
        reader.line(PREFIX + "OK shutdown=false index=1, " + ARGS.format(peer="127.0.0.1:5000"))
        for text in failed("192.168.1.20:53122", "error:100000c0:SSL routines:OPENSSL_internal:"
                                                  "PEER_DID_NOT_RETURN_A_CERTIFICATE"):
            reader.line(text)
        reader.line("E1204 19:08:09 chttp2_server.cc:1] something else the core says\n")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a TLS connection from 192.168.1.20:53122: it sent no client certificate (not paired with this home?)"]
    assert out.getvalue() == "E1204 19:08:09 chttp2_server.cc:1] something else the core says\n"


def test_repeats_from_one_host_are_counted_not_repeated(caplog):
    now = [0.0]
    reader = HandshakeLog(io.StringIO(), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="pacd.tls"):
        for second in (0, 1, 2, 61):
            now[0] = second
            for text in failed(f"10.0.0.5:{4000 + second}", "WRONG_VERSION_NUMBER"):
                reader.line(text)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "10.0.0.5:4000: it does not speak TLS" in messages[0]
    assert messages[1].endswith("(2 more like it from 10.0.0.5 in the last minute)")


def test_client_side_failures_and_successes_are_not_refusals():
    client = PREFIX + "UNKNOWN: Ssl handshake failed: CERTIFICATE_VERIFY_FAILED shutdown=false, args={endpoint=0x1, " \
        "args={grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:7443, grpc.internal.channel_credentials=0x2}}"
    assert parse(client) is None
    assert parse(PREFIX + "OK shutdown=false " + ARGS.format(peer="127.0.0.1:1")) is None
    peer, why, refused = parse(PREFIX + "UNKNOWN: bad: CERTIFICATE_VERIFY_FAILED shutdown=false " + ARGS.format(peer="[::1]:9"))
    assert refused and peer == "[::1]:9" and "not signed by this home's authority" in why


def test_core_lines_below_the_asked_verbosity_are_left_out():
    out = io.StringIO()
    reader = HandshakeLog(out, verbosity="ERROR")
    reader.line("I1204 19:08:09.1 1 chttp2_server.cc:1] info\n")
    reader.line("E1204 19:08:09.1 1 chttp2_server.cc:1] error\n")
    reader.line("a line that is not the core's\n")
    assert out.getvalue() == "E1204 19:08:09.1 1 chttp2_server.cc:1] error\na line that is not the core's\n"


def test_an_unlisted_tls_error_is_named_by_its_code():
    peer, why, refused = parse(PREFIX + "UNKNOWN: Ssl handshake failed: SSL_ERROR_SSL: error:10000070:SSL routines:"
                               "OPENSSL_internal:BAD_PACKET_LENGTH shutdown=false " + ARGS.format(peer="1.2.3.4:5"))
    assert (peer, why, refused) == ("1.2.3.4:5", "the TLS handshake failed (BAD_PACKET_LENGTH)", True)
