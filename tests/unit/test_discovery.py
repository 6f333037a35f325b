from __future__ import annotations

import pytest

from pac.discovery.records import DeviceRecord, from_txt, instance_name, parse_peer, survey, to_txt

A, B, C = "a" * 16, "b" * 16, "c" * 16
OURS, THEIRS = "1" * 16, "2" * 16


def rec(node, cluster, port, host="10.0.0.1"):
    return DeviceRecord(node, cluster, host, port, memory_budget_bytes=5, accelerator="cpu", hostname="pi.local")


def test_txt_round_trip():
    record = rec(A, OURS, 7443)
    txt = {k.encode(): v.encode() for k, v in to_txt(record).items()}
    assert from_txt(txt, "10.0.0.1", 7443) == record
    assert instance_name(record) == f"pacd-{A}-pi-local-7443._pacd._tcp.local."


@pytest.mark.parametrize("txt, field", [({b"node": b"x"}, "node"), ({b"node": A.encode(), b"cluster": b"zz"}, "cluster"),
                                        ({b"node": A.encode(), b"mem": b"-1"}, "mem")])
def test_malformed_txt_names_the_field(txt, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        from_txt(txt, "h", 1)


def test_survey_keeps_strangers_and_duplicates_apart():
    records = [rec(A, OURS, 1), rec(A, OURS, 1), rec(B, THEIRS, 2), rec(C, "", 3), rec("d" * 16, OURS, 4),
               rec("d" * 16, OURS, 5, "10.0.0.2")]
    found = survey(records, OURS)
    assert [r.node_id for r in found.ours] == [A]  # seen twice at one address: one device
    assert [r.node_id for r in found.other_clusters] == [B]
    assert [r.node_id for r in found.unpaired] == [C]
    assert list(found.duplicates) == ["d" * 16] and len(found.duplicates["d" * 16]) == 2


@pytest.mark.parametrize("text, expected", [("pi.local", ("pi.local", 7443)), ("10.0.0.2:9000", ("10.0.0.2", 9000)),
                                            ("[fe80::1]:7", ("fe80::1", 7))])
def test_parse_peer(text, expected):
    assert parse_peer(text) == expected


@pytest.mark.parametrize("text", ["", "host:0", "host:x", ":80", "host:99999"])
def test_parse_peer_rejects(text):
    with pytest.raises(ValueError, match="host:port"):
        parse_peer(text)
