"""Discovery of real daemons: mDNS on loopback, the static peer list, other clusters and duplicates."""

from __future__ import annotations

import asyncio
import json

from click.testing import CliRunner
from conftest import copy_state, make_cluster

from pac.cluster.discover import find_devices
from pac.discovery.mdns import browse
from pac.discovery.records import survey
from pacctl.commands.devices import command as devices_command


def test_three_daemons_found_over_mdns_and_static_list_with_strangers_kept_apart(daemons, cluster, tmp_path):
    ours = [daemons.start(name=f"ours{i}", mdns=True) for i in range(3)]
    other = daemons.start(name="other", mdns=True, cluster=make_cluster(tmp_path / "other-home"))
    twin = daemons.start(name="twin", mdns=True, paired=False,
                         state_dir=copy_state(ours[0].state_dir, tmp_path / "twin-state"))
    expected = {d.node_id for d in ours}

    records, problems = asyncio.run(browse(3.0, ["127.0.0.1"]))
    found = survey(records, cluster.identity.cluster_id)
    assert {r.node_id for r in found.ours} == expected - {ours[0].node_id}
    assert [r.node_id for r in found.other_clusters] == [other.node_id]
    assert {r.address for r in found.duplicates[ours[0].node_id]} == {ours[0].address, twin.address}
    assert problems == []
    assert all(r.memory_budget_bytes == 2**30 and r.accelerator for r in found.ours)

    peers = [d.address for d in ours]
    records, problems = asyncio.run(find_devices(cluster.identity, peers=peers, mdns=False))
    assert {r.node_id for r in survey(records, cluster.identity.cluster_id).ours} == expected
    assert problems == []

    result = CliRunner().invoke(devices_command, ["--home", str(cluster.home), "--no-mdns", "--json",
                                                  *[f"--peer={p}" for p in peers + [other.address]]])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert {r["node_id"] for r in listed["ours"]} == expected
    assert len(listed["problems"]) == 1 and "UNAUTHENTICATED" in listed["problems"][0]


def test_devices_table_reports_nothing_found_cleanly(cluster):
    result = CliRunner().invoke(devices_command, ["--home", str(cluster.home), "--no-mdns",
                                                  "--peer", "127.0.0.1:1"])
    assert result.exit_code == 0 and "this cluster" in result.output and "problem: 127.0.0.1:1" in result.output
