"""What a build file's evaluation reads from the host, beyond what Kiln tracks.

Rules are meant to read only sources, settings and build results, but a
build file is ordinary Python: it may read ``os.environ``, open a file
outside the project, list a folder or start a program. While a build file
loads and its rules run, ``observing`` records each of those done by the
build file's own code (or by the standard library and third-party code it
called), not by Kiln's:

- environment variables read (name and a digest of the value, never the
  value itself; reading the whole environment records every variable),
  through an ``os.environ`` that notes reads;
- files opened for reading (their stat signature when read) and folders
  listed (their names), through Python's audit hooks (PEP 578);
- what no stamp can capture: a file opened for writing, a file or folder
  changed, a program started, a network connection: the build is then
  not stamped, and each is named with its line.

The build stamp (engine/stamp.py) files what was read and is answered only
while all of it is the same. Existence checks (``os.stat``,
``os.path.exists``) raise no audit event and are not seen.

An audit hook cannot be removed, so one is added per process and does
nothing unless an observation runs on the calling thread.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import threading
from dataclasses import dataclass, field

from kiln.system.stat_signature import Signature, listing, signature, variable_digest

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Iterator

# Audit events that only a stamp-defeating side effect raises.
_IMPURE = {
    "subprocess.Popen": "started a program",
    "os.system": "started a program",
    "os.exec": "started a program",
    "os.posix_spawn": "started a program",
    "os.spawn": "started a program",
    "os.fork": "forked",
    "socket.connect": "opened a network connection",
    "socket.getaddrinfo": "looked up a host name",
    "socket.gethostbyname": "looked up a host name",
    "urllib.Request": "made a network request",
    "os.remove": "deleted a file",
    "os.rename": "renamed a file",
    "os.rmdir": "removed a folder",
    "os.mkdir": "made a folder",
    "os.symlink": "made a symbolic link",
    "os.link": "made a hard link",
    "os.truncate": "truncated a file",
    "os.chmod": "changed a file's mode",
    "os.utime": "changed a file's times",
    "shutil.rmtree": "removed a folder tree",
}
_LISTS = {"os.listdir", "os.scandir"}

_KILN = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# Code that acts on its caller's behalf: the caller is the one that read.
_LIBRARIES = tuple(
    {
        os.path.join(p, "")
        for name in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(name))
    }
)


@dataclass
class Observation:
    """What one evaluation read from the host, and what it did that no
    stamp can capture; ``where``: the first ``file:line`` of each read."""

    env: dict[str, str | None] = field(default_factory=dict)  # name -> value's digest
    files: dict[str, Signature | None] = field(default_factory=dict)
    listed: dict[str, str | None] = field(default_factory=dict)
    impure: list[str] = field(default_factory=list)  # why no stamp can be filed
    where: dict[str, str] = field(default_factory=dict)
    busy: bool = False  # (the hook's own stat and listing calls are not the build file's)

    def read_env(self, name: str) -> None:
        if name in self.env:
            return
        where = _user_line()
        if where is not None:
            self.env[name] = _environ_data(name)
            self.where.setdefault(f"environment variable {name}", where)

    def read_all_env(self) -> None:
        where = _user_line()
        if where is None:
            return
        for name in list(_ORIGINAL_ENVIRON):
            self.env.setdefault(name, _environ_data(name))
        self.where.setdefault("the whole environment", where)

    def warning(self) -> str | None:
        """The one line a build prints about what its evaluation read
        directly, or None if it read nothing."""
        if not self.where:
            return None
        (first, line), *rest = self.where.items()
        more = f" (and {len(rest)} more)" if rest else ""
        return (
            f"{line}: the build file read {first} directly{more}; the stamp tracks "
            "it, but `setting()` and `source()` say what a build depends on"
        )


_ORIGINAL_ENVIRON = os.environ
_observing: dict[int, Observation] = {}  # thread ident -> what it records into
_environ_users = 0  # observations under way (os.environ is swapped while any is)
_lock = threading.Lock()
_hooked = False


def _environ_data(name: str) -> str | None:
    return variable_digest(_ORIGINAL_ENVIRON.get(name))


class _RecordingEnviron(os._Environ):  # type: ignore[name-defined]
    """``os.environ`` while an evaluation is observed: the same variables
    (writes reach the process environment), reads noted."""

    def __getitem__(self, key: str) -> str:
        _note_env(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            _note_env(key)
        return super().__contains__(key)

    def __iter__(self) -> Iterator[str]:
        _note_all_env()
        return super().__iter__()

    def copy(self) -> dict[str, str]:
        _note_all_env()
        return dict(self)


def _note_env(name: str) -> None:
    obs = _observing.get(threading.get_ident())
    if obs is not None:
        obs.read_env(name)


def _note_all_env() -> None:
    obs = _observing.get(threading.get_ident())
    if obs is not None:
        obs.read_all_env()


def _user_line() -> str | None:
    """``file:line`` of the innermost caller that is neither Kiln, nor the
    standard library or an installed package acting for it; None when Kiln
    (or Python's import machinery) is the one reading."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # (this module's own frames)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_KILN):
            return None
        if name.startswith("<frozen importlib"):
            return None  # an import: project modules are tracked as code files
        if not (name.startswith(_LIBRARIES) or name.startswith("<")):
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _hook(event: str, args: tuple) -> None:
    obs = _observing.get(threading.get_ident())
    if obs is None or obs.busy:
        return
    obs.busy = True
    try:
        if event == "open":
            _opened(obs, *args[:3])
        elif event in _LISTS:
            _listed(obs, args[0])
        elif event in _IMPURE:
            where = _user_line()
            if where is not None:
                obs.impure.append(f"{where}: the build file {_IMPURE[event]} ({event})")
    finally:
        obs.busy = False


def _opened(obs: Observation, path: object, mode: object, flags: object) -> None:
    if isinstance(path, int) or path is None:
        return  # a descriptor already open
    writes = isinstance(mode, str) and any(c in mode for c in "wax+")
    if isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
        writes = True
    where = _user_line()
    if where is None:
        return
    name = os.path.abspath(os.fsdecode(path))  # type: ignore[arg-type]
    if writes:
        obs.impure.append(f"{where}: the build file wrote {name}")
        return
    if name not in obs.files:
        obs.files[name] = signature(name)
        obs.where.setdefault(f"the file {name}", where)


def _listed(obs: Observation, path: object) -> None:
    if isinstance(path, int):
        return
    where = _user_line()
    if where is None:
        return
    name = os.path.abspath(os.fsdecode(path if path is not None else "."))  # type: ignore[arg-type]
    if name not in obs.listed:
        obs.listed[name] = listing(name)
        obs.where.setdefault(f"the folder {name}", where)


@contextlib.contextmanager
def observing(obs: Observation) -> Iterator[Observation]:
    """Record into ``obs`` what the code run on this thread inside reads
    (several threads may each observe their own build at once)."""
    global _hooked, _environ_users
    me = threading.get_ident()
    with _lock:
        if not _hooked:
            sys.addaudithook(_hook)
            _hooked = True
        previous = _observing.get(me)
        _observing[me] = obs
        _environ_users += 1
        if _environ_users == 1:
            os.environ = _recording_environ()  # noqa: B003 (the same variables, reads noted)
    try:
        yield obs
    finally:
        with _lock:
            if previous is None:
                del _observing[me]
            else:
                _observing[me] = previous
            _environ_users -= 1
            if _environ_users == 0:
                os.environ = _ORIGINAL_ENVIRON  # noqa: B003


def _recording_environ() -> os._Environ:  # type: ignore[name-defined]
    e = _ORIGINAL_ENVIRON
    return _RecordingEnviron(e._data, e.encodekey, e.decodekey, e.encodevalue, e.decodevalue)
