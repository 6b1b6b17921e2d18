"""This machine's executor settings: ``$KILN_CONFIG``, else
``$XDG_CONFIG_HOME/kiln/config.toml`` (``~/.config/kiln/config.toml``)::

    # System features this machine's executors offer (steps may require them).
    features = ["signer", "big-parallel"]
    # The parallelism hint native steps get as KILN_BUILD_CORES (not in keys).
    build-cores = 8
    # The wall-clock limit in seconds of a native or wasm step that sets no
    # timeout= of its own (not in keys; a step past it fails, uncached).
    step-timeout = 600

    # A secret: a file a step may read at /kiln/secrets/NAME, only if the
    # step requires the feature the secret belongs to.
    [secrets.release-key]
    file = "~/keys/release.pem"
    feature = "signer"

    # How far an archive (fetch ... unpack=True, unpack(), kiln prefetch
    # --unpack) may unpack before it is refused; these are the defaults.
    [archives]
    max-unpacked-mib = 16384   # all members together
    max-ratio = 200            # unpacked size / archive size (past 64 MiB)
    max-members = 1000000      # files, folders and links

    # A REAPI remote cache and/or execution engine (see kiln.remote.settings).
    [remote]
    cache = "grpc://cache.example:8980"

    # The resident server (docs/server.md): "on-build" starts it, in the
    # background, when a build or check finds none running ("manual", the
    # default: only `kiln server start` does); it exits after `idle-hours`.
    [server]
    start = "on-build"
    idle-hours = 3

No file means no features, no secrets, one core per CPU, a 600 s step
timeout and the default archive limits. ``$KILN_STEP_TIMEOUT`` sets the
step timeout over the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from kiln import errors

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kiln.remote.settings import RemoteSettings

NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
DEFAULT_ARCHIVE_MAX_MIB = 16 << 10
DEFAULT_ARCHIVE_MAX_RATIO = 200
DEFAULT_ARCHIVE_MAX_MEMBERS = 1_000_000
RATIO_FLOOR = 64 << 20
DEFAULT_STEP_TIMEOUT = 600.0
STEP_TIMEOUT_VARIABLE = "KILN_STEP_TIMEOUT"  # over the file's step-timeout
DEFAULT_SERVER_IDLE_S = 3 * 3600.0


@dataclass(frozen=True)
class Secret:
    """A secret by name; only its name ever enters a key or a log."""

    name: str
    file: Path
    feature: str


@dataclass(frozen=True)
class ArchiveLimits:
    """How far an archive may unpack before Kiln refuses it. A setting of the
    machine that unpacks, not of any action: a refused archive is an error,
    never a result, and an accepted one unpacks to the same tree anywhere.
    The ratio is checked only past ``RATIO_FLOOR`` bytes, so small archives
    of very compressible data are fine."""

    max_bytes: int = DEFAULT_ARCHIVE_MAX_MIB << 20
    max_ratio: int = DEFAULT_ARCHIVE_MAX_RATIO
    max_members: int = DEFAULT_ARCHIVE_MAX_MEMBERS
    config: str = "the Kiln config file"  # where to raise them, for error hints


@dataclass(frozen=True)
class Config:
    features: frozenset[str] = frozenset()
    build_cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    secrets: dict[str, Secret] = field(default_factory=dict)
    path: Path | None = None
    archives: ArchiveLimits = ArchiveLimits()
    remote: RemoteSettings | None = None  # the [remote] table, if any
    step_timeout: float = DEFAULT_STEP_TIMEOUT  # seconds, for steps that set none
    server_on_build: bool = False  # [server] start = "on-build"
    server_idle_s: float = DEFAULT_SERVER_IDLE_S  # [server] idle-hours

    def remote_settings(self) -> RemoteSettings:
        """The ``[remote]`` settings, defaults (no remote) if the file has none."""
        from kiln.remote.settings import RemoteSettings

        return self.remote or RemoteSettings(where=self.where())

    def where(self) -> str:
        return str(self.path) if self.path else "the Kiln config file (none found)"


def config_path() -> Path:
    explicit = os.environ.get("KILN_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "kiln" / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """Read and check the config file; clear errors name the file and key."""
    path = path or config_path()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Config(
            archives=ArchiveLimits(config=str(path)), step_timeout=_step_timeout(path, {})
        )
    except tomllib.TOMLDecodeError as e:
        raise _bad(path, str(e), "fix the TOML syntax") from None
    except OSError as e:
        raise _bad(path, f"cannot read it: {e.strerror}", "check its permissions") from None
    known_keys = {
        "features", "build-cores", "step-timeout", "secrets", "archives", "remote", "server",
    }  # fmt: skip
    unknown = set(data) - known_keys
    if unknown:
        known = (
            "features, build-cores, step-timeout, [secrets.NAME], [archives], [remote], [server]"
        )
        raise _bad(path, f"unknown setting {sorted(unknown)[0]!r}", f"known: {known}")
    features = data.get("features", [])
    if not isinstance(features, list) or not all(
        isinstance(f, str) and NAME.fullmatch(f) for f in features
    ):
        raise _bad(path, 'features must be a list of names like "signer" or "big-parallel"')
    cores = data.get("build-cores", os.cpu_count() or 1)
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
        raise _bad(path, f"build-cores must be a positive whole number, not {cores!r}")
    timeout = _step_timeout(path, data)
    secrets: dict[str, Secret] = {}
    for name, entry in data.get("secrets", {}).items():
        if not NAME.fullmatch(name) or not isinstance(entry, dict):
            raise _bad(path, f"[secrets.{name}] must be a table with a lower-case name")
        if set(entry) != {"file", "feature"}:
            raise _bad(path, f"[secrets.{name}] needs exactly `file` and `feature`")
        if entry["feature"] not in features:
            raise _bad(
                path, f"secret {name!r} belongs to feature {entry['feature']!r}, "
                "which `features` does not offer", f"add {entry['feature']!r} to features",
            )  # fmt: skip
        file = Path(os.path.expanduser(str(entry["file"])))
        secrets[name] = Secret(name, file, entry["feature"])
    remote = None
    if "remote" in data:
        from kiln.remote.settings import from_table  # (only configs that name a remote)

        remote = from_table(data["remote"], path)
    on_build, idle = _server(path, data)
    return Config(
        frozenset(features), cores, secrets, path, _archive_limits(path, data), remote,
        step_timeout=timeout, server_on_build=on_build, server_idle_s=idle,
    )  # fmt: skip


def _server(path: Path, data: dict[str, object]) -> tuple[bool, float]:
    """The ``[server]`` table: (start on build?, idle seconds), checked."""
    table = data.get("server", {})
    if not isinstance(table, dict):
        raise _bad(path, "[server] must be a table")
    unknown = set(table) - {"start", "idle-hours"}
    if unknown:
        raise _bad(path, f"unknown setting {sorted(unknown)[0]!r} in [server]",
                   "known: start, idle-hours")  # fmt: skip
    start = table.get("start", "manual")
    if start not in ("manual", "on-build"):
        raise _bad(path, f'[server] start must be "manual" or "on-build", not {start!r}')
    hours = table.get("idle-hours", DEFAULT_SERVER_IDLE_S / 3600)
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0:
        raise _bad(path, f"[server] idle-hours must be a positive number, not {hours!r}")
    return start == "on-build", float(hours) * 3600


def _step_timeout(path: Path, data: dict[str, object]) -> float:
    """Seconds a step may run without a ``timeout=`` of its own:
    ``$KILN_STEP_TIMEOUT``, else the file's ``step-timeout``, else 600."""
    env = os.environ.get(STEP_TIMEOUT_VARIABLE)
    value: object = data.get("step-timeout", DEFAULT_STEP_TIMEOUT)
    if env:
        try:
            value = float(env)
        except ValueError:
            value = env
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1e9:
        if env:
            raise errors.KilnError(
                f"{STEP_TIMEOUT_VARIABLE} must be a positive number of seconds, not {env!r}",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        raise _bad(path, f"step-timeout must be a positive number of seconds, not {value!r}")
    return float(value)


def _archive_limits(path: Path, data: dict[str, object]) -> ArchiveLimits:
    """The ``[archives]`` table, checked; defaults for what it leaves out."""
    table = data.get("archives", {})
    if not isinstance(table, dict):
        raise _bad(path, "[archives] must be a table")
    known = ("max-unpacked-mib", "max-ratio", "max-members")
    unknown = set(table) - set(known)
    if unknown:
        raise _bad(path, f"unknown setting {sorted(unknown)[0]!r} in [archives]",
                   f"known: {', '.join(known)}")  # fmt: skip
    for key, value in table.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _bad(path, f"[archives] {key} must be a positive whole number, not {value!r}")
    return ArchiveLimits(
        max_bytes=table.get("max-unpacked-mib", DEFAULT_ARCHIVE_MAX_MIB) << 20,
        max_ratio=table.get("max-ratio", DEFAULT_ARCHIVE_MAX_RATIO),
        max_members=table.get("max-members", DEFAULT_ARCHIVE_MAX_MEMBERS),
        config=str(path),
    )


def _bad(path: Path, problem: str, hint: str | None = None) -> errors.KilnError:
    return errors.KilnError(f"{path}: {problem}", hint=hint, exit_code=errors.ExitCode.BAD_INPUT)


def check_secret(config: Config, name: str, requires: list[str], where: str) -> Secret:
    """The secret ``name`` for a step requiring ``requires``, if it may have
    it and the file can be read; else a clear error (never quoting it)."""
    secret = config.secrets.get(name)
    if secret is None:
        raise errors.KilnError(
            f"{where}: unknown secret {name!r}",
            hint=f"declare it as [secrets.{name}] in {config.where()}",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    if secret.feature not in requires:
        raise errors.KilnError(
            f"{where}: secret {name!r} belongs to feature {secret.feature!r}, "
            "which the step does not require",
            hint=f"add requires=[{secret.feature!r}] to the step",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    try:
        with open(secret.file, "rb"):
            pass
    except OSError as e:
        raise errors.KilnError(
            f"{where}: secret {name!r}: cannot read {secret.file}: {e.strerror}",
            hint=f"fix the file or its entry in {config.where()}",
            exit_code=errors.ExitCode.BAD_INPUT,
        ) from None
    return secret
