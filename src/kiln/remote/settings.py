"""Where the remote engine is and how Kiln may use it.

Read from the ``[remote]`` table of the config file, then the environment
(``KILN_REMOTE_CACHE``, ``KILN_REMOTE_EXEC``, ``KILN_REMOTE_INSTANCE``),
then ``kiln build``'s options, each overriding the one before::

    [remote]
    cache = "grpc://cache.example:8980"   # remote cache: look up, then push
    exec = "grpcs://grid.example:50051"    # remote execution (and its cache)
    instance = "main"                      # REAPI instance name ("" default)
    ca-cert = "~/.config/kiln/ca.pem"      # grpcs: the CA to trust
    client-cert = "~/.config/kiln/me.pem"  # grpcs: mutual TLS (with client-key)
    client-key = "~/.config/kiln/me.key"
    token-env = "KILN_REMOTE_TOKEN"        # a bearer token, by reference:
    # token-file = "~/.config/kiln/token"  #   a variable or a file, never here
    deadline = 60                          # seconds for one request
    push = true                            # upload results (false: read only)
    fallback = false                       # exec unreachable: build locally

Standard library only: the config is read on every build.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from kiln import errors

DEFAULT_DEADLINE = 60.0
SCHEMES = {"grpc": False, "grpcs": True}  # scheme -> TLS
KEYS = (
    "cache", "exec", "instance", "ca-cert", "client-cert", "client-key",
    "token-env", "token-file", "deadline", "push", "fallback",
)  # fmt: skip


@dataclass(frozen=True)
class Endpoint:
    """A REAPI server address: ``host:port`` and whether it speaks TLS."""

    target: str
    tls: bool

    def __str__(self) -> str:
        return f"{'grpcs' if self.tls else 'grpc'}://{self.target}"


@dataclass(frozen=True)
class RemoteSettings:
    """How this machine uses a remote; ``None`` endpoints mean "not used"."""

    cache: Endpoint | None = None
    exec: Endpoint | None = None
    instance: str = ""
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    deadline: float = DEFAULT_DEADLINE
    push: bool = True
    fallback: bool = False
    where: str = "the Kiln config file"  # for error hints

    @property
    def enabled(self) -> bool:
        return self.cache is not None or self.exec is not None

    @property
    def cache_endpoint(self) -> Endpoint | None:
        """Where results are looked up and pushed: the cache, else the
        execution server (REAPI engines serve both)."""
        return self.cache or self.exec

    def token(self) -> str | None:
        """The bearer token, read now from where the settings point."""
        if self.token_env:
            value = os.environ.get(self.token_env)
            if not value:
                raise errors.KilnError(
                    f"the remote token variable {self.token_env} is not set",
                    hint=f"export it, or change token-env in {self.where}",
                    exit_code=errors.ExitCode.BAD_INPUT,
                )
            return value.strip()
        if self.token_file:
            try:
                return self.token_file.read_text().strip()
            except OSError as e:
                raise errors.KilnError(
                    f"cannot read the remote token file {self.token_file}: {e.strerror}",
                    hint=f"check the file, or change token-file in {self.where}",
                    exit_code=errors.ExitCode.BAD_INPUT,
                ) from None
        return None

    def overridden(
        self,
        cache: str | None = None,
        exec: str | None = None,
        instance: str | None = None,
        push: bool | None = None,
        fallback: bool | None = None,
    ) -> RemoteSettings:
        """These settings with the environment's, then the given, values on top."""
        env = os.environ
        cache = cache or env.get("KILN_REMOTE_CACHE") or None
        exec = exec or env.get("KILN_REMOTE_EXEC") or None
        instance = instance if instance is not None else env.get("KILN_REMOTE_INSTANCE")
        changes: dict[str, object] = {}
        if cache:
            changes["cache"] = parse_endpoint(cache, "--remote-cache / KILN_REMOTE_CACHE")
        if exec:
            changes["exec"] = parse_endpoint(exec, "--remote-exec / KILN_REMOTE_EXEC")
        if instance is not None:
            changes["instance"] = instance
        if push is not None:
            changes["push"] = push
        if fallback is not None:
            changes["fallback"] = fallback
        return replace(self, **changes) if changes else self


def parse_endpoint(url: str, where: str) -> Endpoint:
    """``grpc://HOST:PORT`` or ``grpcs://HOST:PORT``, checked."""
    hint = "write it as grpc://HOST:PORT (or grpcs:// for TLS)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise _bad(where, f"{url!r} is not a server address: {e}", hint) from None
    if parts.scheme not in SCHEMES:
        raise _bad(where, f"{url!r}: unknown scheme {parts.scheme or '(none)'!r}", hint)
    if not parts.hostname or port is None:
        raise _bad(where, f"{url!r} needs a host and a port", hint)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise _bad(where, f"{url!r} has more than a host and a port", hint)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Endpoint(f"{host}:{port}", SCHEMES[parts.scheme])


def from_table(table: object, path: Path) -> RemoteSettings:
    """The ``[remote]`` table of config file ``path``, checked."""
    where = f"{path} [remote]"
    if not isinstance(table, dict):
        raise _bad(str(path), "[remote] must be a table")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise _bad(where, f"unknown setting {unknown[0]!r}", f"known: {', '.join(KEYS)}")
    for key in ("cache", "exec", "instance", "ca-cert", "client-cert", "client-key",
                "token-env", "token-file"):  # fmt: skip
        if key in table and not isinstance(table[key], str):
            raise _bad(where, f"{key} must be a string")
    for key in ("push", "fallback"):
        if key in table and not isinstance(table[key], bool):
            raise _bad(where, f"{key} must be true or false")
    deadline = table.get("deadline", DEFAULT_DEADLINE)
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0:
        raise _bad(where, f"deadline must be a positive number of seconds, not {deadline!r}")
    if "token-env" in table and "token-file" in table:
        raise _bad(where, "give token-env or token-file, not both")
    if ("client-cert" in table) != ("client-key" in table):
        raise _bad(where, "client-cert and client-key go together (mutual TLS)")
    settings = RemoteSettings(
        cache=parse_endpoint(table["cache"], where) if table.get("cache") else None,
        exec=parse_endpoint(table["exec"], where) if table.get("exec") else None,
        instance=table.get("instance", ""),
        ca_cert=_path(table.get("ca-cert")),
        client_cert=_path(table.get("client-cert")),
        client_key=_path(table.get("client-key")),
        token_env=table.get("token-env"),
        token_file=_path(table.get("token-file")),
        deadline=float(deadline),
        push=table.get("push", True),
        fallback=table.get("fallback", False),
        where=str(path),
    )
    return settings


def _path(value: str | None) -> Path | None:
    return Path(os.path.expanduser(value)) if value else None


def _bad(where: str, problem: str, hint: str | None = None) -> errors.KilnError:
    return errors.KilnError(f"{where}: {problem}", hint=hint, exit_code=errors.ExitCode.BAD_INPUT)
