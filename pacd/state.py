"""The daemon's state directory: a persistent node id, TLS identity, stored profiles (all owner-only)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from pac.errors import ConfigError
from pac.security import NODE_ID_RE
from pac.security.files import ensure_private_dir, write_private


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def open(cls, root: Path) -> StateDir:
        try:
            ensure_private_dir(root)
        except PermissionError as error:
            raise ConfigError(f"cannot create state directory {root}: {error.strerror}; "
                              "pick another with --state-dir") from error
        return cls(Path(root))

    @property
    def profiles(self) -> Path:
        return ensure_private_dir(self.root / "profiles")

    def node_id(self) -> str:
        """Made on first start and kept, so peers and the planner recognise the device across restarts."""
        path = self.root / "node_id"
        if not path.exists():
            write_private(path, (secrets.token_hex(8) + "\n").encode())
        node_id = path.read_text().strip()
        if not NODE_ID_RE.match(node_id):
            raise ConfigError(f"{path} does not hold a node id (16 lowercase hex digits); remove it to "
                              "make a new one (the device must then be paired again)")
        return node_id
