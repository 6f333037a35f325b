"""`pacctl pair HOST:PORT`: join a device to the home cluster after a person confirms its code."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from pac.discovery.known import remember
from pac.discovery.records import parse_peer
from pac.errors import PacError
from pac.net.daemon_client import pair
from pac.security.home import default_home
from pacctl.commands.init import home_option


@click.command("pair")
@click.argument("address")
@home_option
@click.option("--code", help="the code the device printed (asked for if not given)")
def command(address: str, home: Path | None, code: str | None) -> None:
    """Pair the device at ADDRESS (host:port); it shows a one-time code in its log ('pacd info')."""
    try:
        host, port = parse_peer(address)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="ADDRESS") from error

    def ask(info: dict) -> str:
        click.echo(f"device {info['node_id']} ({info['hostname']}, {info['accelerator']}, "
                   f"{info['memory_budget_bytes'] / 2**30:.1f} GiB offered)")
        return code or click.prompt("pairing code shown by the device")

    home = home or default_home()
    try:
        info = asyncio.run(pair(host, port, home, ask))
        remember(home, info["node_id"], f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
                 info["hostname"], info["certificate_serial"])
    except (PacError, ValueError, OSError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"paired: device {info['node_id']} joined cluster {info['cluster_id']}; remembered at "
               f"{host}:{port} (pacctl devices, train and the others ask it there, and follow it on mDNS)")


@click.command("unpair")
@click.argument("device")
@home_option
@click.option("--peer", "peers", multiple=True,
              help="HOST:PORT to ask too (repeatable): a device paired before this home remembered devices.")
def unpair_command(device: str, home: Path | None, peers: tuple[str, ...]) -> None:
    """Forget DEVICE (its node id, a unique prefix of it, its host name or address) and revoke its
    certificate: every device of the home this command reaches refuses it from now on, and the others as
    soon as any later command reaches them."""
    from pac.cluster.discover import find_home
    from pac.discovery.known import forget, load_known, resolve
    from pac.security.home import controller_identity, load_authority
    from pac.security.revocation import revoke

    home = home or default_home()
    try:
        identity = controller_identity(home)
        known = load_known(home)
        entry = resolve(known, device)
        if entry is None or not entry.serial:  # not remembered (paired before pacctl remembered devices)
            entry = _served(asyncio.run(find_home(home, identity, peers=peers))[0].ours, device) or entry
        if entry is None or not entry.serial:
            names = ", ".join(f"{d.node_id} ({d.hostname or d.address})" for d in known.values()) or "none"
            raise click.ClickException(f"{device!r} names no single device this home remembers or finds "
                                       f"answering (remembered: {names}); its certificate is revoked by its serial "
                                       "number, which the device serves: run this while it answers")
        ca_key, ca_cert, _ = load_authority(home)
        revoke(home, ca_key, ca_cert, entry.node_id, entry.serial, tuple(entry.earlier_serials))
        forget(home, entry.node_id)
        _, problems = asyncio.run(find_home(home, identity, peers=peers))  # sends the new list to all it finds
    except PacError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"unpaired {entry.node_id}: forgotten, and its certificate revoked")
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)


def _served(records, wanted: str):
    """The device of `records` that `wanted` names, with the serial of the certificate it serves."""
    from cryptography import x509

    from pac.discovery.known import KnownDevice, resolve
    from pac.net.daemon_client import fetch_server_certificate

    found = resolve({r.node_id: KnownDevice(r.node_id, r.address, r.hostname) for r in records}, wanted)
    if found is None:
        return None
    record = next(r for r in records if r.node_id == found.node_id)
    try:
        found.serial = x509.load_pem_x509_certificate(fetch_server_certificate(record.host, record.port)).serial_number
    except (OSError, ValueError):
        return None
    return found


@click.command("renew")
@click.argument("devices", nargs=-1)
@home_option
def renew_command(devices: tuple[str, ...], home: Path | None) -> None:
    """Issue fresh certificates (about 13 months) to DEVICES (default: every device of this home it finds)
    and to this controller. Each device keeps its key and restarts its server on the new certificate; one
    holding a job refuses until the job ends. Run it before the certificates end (`pacctl devices`
    shows the devices; the old certificates stay valid until their own end)."""
    from cryptography import x509

    from pac.cluster.discover import find_home
    from pac.discovery.known import load_known, save_known
    from pac.net.daemon_client import DaemonClient, fetch_server_certificate
    from pac.security import authority
    from pac.security.home import controller_identity, load_authority
    from pac.security.identity import store_identity

    home = home or default_home()
    try:
        identity = controller_identity(home)
        ca_key, ca_cert, _ = load_authority(home)
        found, problems = asyncio.run(find_home(home, identity))
    except PacError as error:
        raise click.ClickException(str(error)) from error
    wanted = [r for r in found.ours if not devices or any(
        w in (r.node_id, r.hostname, r.address) or r.node_id.startswith(w) for w in devices)]
    if devices and len(wanted) < len(devices):
        raise click.ClickException(f"{', '.join(devices)}: not all found among this home's devices "
                                   f"({', '.join(r.node_id for r in found.ours) or 'none found'})")

    async def renew(record) -> str:
        served = x509.load_pem_x509_certificate(fetch_server_certificate(record.host, record.port))
        fresh = authority.reissue(ca_key, ca_cert, served)
        async with DaemonClient(record.address, identity, record.node_id) as client:
            until = await client.renew_certificate(authority.cert_pem(fresh))
        known = load_known(home)
        if record.node_id in known:
            entry = known[record.node_id]
            entry.earlier_serials = sorted({*entry.earlier_serials, entry.serial, served.serial_number} - {0})
            entry.serial = fresh.serial_number
            save_known(home, known)
        return f"{record.node_id} ({record.address}): renewed until {until}"

    for record in wanted:
        try:
            click.echo(asyncio.run(renew(record)))
        except (PacError, OSError, ValueError) as error:
            problems.append(f"{record.node_id} ({record.address}): not renewed: {error}")
    mine = authority.reissue(ca_key, ca_cert, x509.load_pem_x509_certificate(identity.cert_pem))
    store_identity(home, authority.cert_pem(mine), identity.ca_pem)
    click.echo(f"this controller: renewed until {mine.not_valid_after_utc.isoformat()}")
    for problem in problems:
        click.echo(f"problem: {problem}", err=True)
    if problems:
        raise SystemExit(1)
