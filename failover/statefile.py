"""Durable node state (term, licence contact): JSON, written to a temp file, fsynced, renamed."""
from __future__ import annotations

import json
from pathlib import Path

from failover.core.supervisor import Persisted
from telephony.runtime.files import replace_file


class StateFileError(Exception):
    pass


def load_state(path: Path) -> Persisted:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Persisted()
    except OSError as e:
        raise StateFileError(f"{path}: cannot read node state: {e}") from e
    try:
        data = json.loads(raw)
        term = data["term"]
        contact = data.get("last_contact_wall")
        if (not isinstance(term, int) or term < 0
                or (contact is not None and not isinstance(contact, (int, float)))):
            raise ValueError("bad field types")
    except (ValueError, KeyError, TypeError) as e:
        raise StateFileError(f"{path}: node state is corrupt ({e}); refusing to start with an "
                             "unknown term. Restore it or move it aside after checking the "
                             "peer's term.") from e
    return Persisted(term=term, last_contact_wall=contact)


def save_state(path: Path, state: Persisted) -> None:
    """Atomic and durable: a crash leaves either the old or the new file, never a mix."""
    data = json.dumps({"term": state.term, "last_contact_wall": state.last_contact_wall}).encode()
    replace_file(path, data, 0o600)
