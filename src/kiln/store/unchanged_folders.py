"""Source folders known unchanged since the stat cache last scanned them.

Putting a source folder (``store/ingest.py``) lists every folder of it and
``lstat``s every entry, to compare with the stat cache: work proportional
to the whole tree even when one file changed. The resident server watches
the projects it builds (``kiln.server.watch``), so it can tell a command
which folders nobody touched since a command it ran before scanned them:
the Ingester then takes such a folder's cached listing as it is, without
listing it, and only the folders on the way to a change are looked at.

Off by default; in a command run by the server, ``known`` is set from the
request before the build starts, and what the command scanned is sent back
(``scanned``) for the next ones.
"""

from __future__ import annotations

_known: frozenset[str] = frozenset()
_scanned: set[str] = set()
_recording = False


def start(known: list[str] | frozenset[str]) -> None:
    """In a command run by the server: these folders are unchanged since
    the stat cache's rows for them were written; record what is scanned."""
    global _known, _recording
    _known = frozenset(known)
    _recording = True


def unchanged(folder: str) -> bool:
    """Whether ``folder`` (a real path) is known unchanged since it was scanned."""
    return folder in _known


def note_scanned(folders: set[str] | list[str]) -> None:
    """A put scanned (or took as unchanged) these folders and saved their rows."""
    if _recording:
        _scanned.update(folders)


def scanned() -> list[str]:
    """What this command's puts scanned, for the server."""
    return sorted(_scanned)
