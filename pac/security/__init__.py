"""Security of the home cluster: its certificate authority, node identities and mutual-TLS channels.

For daemon-to-daemon and controller-to-daemon calls (see docs/security.md):

    from pac.security import load_identity, secure_channel, server_credentials
    me = load_identity(state_dir)                       # raises NotPairedError if not paired
    async with secure_channel("10.0.0.7:7443", me, peer_node_id) as channel: ...
    server.add_secure_port(address, server_credentials(state_dir))
"""

from pac.security.authority import ANY_NODE_NAME, CLUSTER_ID_RE, NODE_ID_RE, node_name
from pac.security.channel import secure_channel, tls_verdict
from pac.security.identity import (
    Identity,
    NotPairedError,
    channel_credentials,
    is_paired,
    load_identity,
    server_credentials,
)

__all__ = [
    "ANY_NODE_NAME", "CLUSTER_ID_RE", "NODE_ID_RE", "Identity", "NotPairedError", "channel_credentials",
    "is_paired", "load_identity", "node_name", "secure_channel", "server_credentials", "tls_verdict",
]
