"""How a step of each kind is described, apart from the executor that runs it.

Build rules, ``kiln prefetch`` and ``kiln wasm run`` describe steps with
these; the executors read them back from the action. An executor's module
is imported only when a step of its kind runs (``kiln.exec.kinds``), so a
build whose steps are all cache hits loads none of them, nor what they
need (Wasmtime, the HTTP client, the archive readers).
"""

from __future__ import annotations

import base64
import binascii
import platform
import posixpath
import re
import urllib.parse
from dataclasses import dataclass, field

from kiln import errors
from kiln.exec.base import TransientError
from kiln.exec.kinds import FETCH_ABI, NATIVE_ABI, WASM_ABI

# ---------------------------------------------------------------------- wasm

DEFAULT_FUEL = 10**10
DEFAULT_MEMORY_MIB = 1024
DEFAULT_DISK_MIB = 16 << 10


@dataclass(frozen=True)
class WasmLimits:
    """Resource limits; part of the action, so part of its key."""

    fuel: int = DEFAULT_FUEL
    memory_mib: int = DEFAULT_MEMORY_MIB
    disk_mib: int = DEFAULT_DISK_MIB

    def platform(self) -> tuple[tuple[str, str], ...]:
        return (
            ("disk-mib", str(self.disk_mib)),
            ("fuel", str(self.fuel)),
            ("isa", "wasm32"),
            ("kiln-abi", WASM_ABI),
            ("memory-mib", str(self.memory_mib)),
        )

    @classmethod
    def from_platform(cls, props: dict[str, str]) -> WasmLimits:
        if props.get("kiln-abi") != WASM_ABI:
            raise TransientError(
                f"action wants WASI contract {props.get('kiln-abi')!r}; "
                f"this kiln runs {WASM_ABI!r}",
                hint="build the action with this version of kiln",
            )
        return cls(
            int(props.get("fuel", DEFAULT_FUEL)),
            int(props.get("memory-mib", DEFAULT_MEMORY_MIB)),
            int(props.get("disk-mib", DEFAULT_DISK_MIB)),
        )


# -------------------------------------------------------------------- native

NATIVE_MEMORY_MIB = 4096
RECURSIVE_PROPERTY = "recursive"  # a native step that may request steps (kiln-sub)
RUNTIME_PREFIX = "runtime:"  # a runtime among a step's tool names (kiln.exec.tools)
NATIVE_PIDS = 256
NATIVE_DISK_MIB = 16 << 10


@dataclass(frozen=True)
class NativeLimits:
    """Resource limits of a native step; part of its action."""

    memory_mib: int = NATIVE_MEMORY_MIB
    pids: int = NATIVE_PIDS
    disk_mib: int = NATIVE_DISK_MIB

    def platform(self, tool_names: list[str], tools_identity: str) -> tuple[tuple[str, str], ...]:
        """The action's platform properties: these limits, the contract,
        this host's architecture, and the declared tools and their identity."""
        return (
            ("disk-mib", str(self.disk_mib)),
            ("isa", platform.machine()),
            ("kiln-abi", NATIVE_ABI),
            ("memory-mib", str(self.memory_mib)),
            ("os", "linux"),
            ("pids", str(self.pids)),
            ("tool-names", ",".join(sorted(tool_names))),
            ("tools", tools_identity),
        )

    @classmethod
    def from_platform(cls, props: dict[str, str]) -> NativeLimits:
        """The limits an action's platform properties name."""
        return cls(
            int(props.get("memory-mib", NATIVE_MEMORY_MIB)),
            int(props.get("pids", NATIVE_PIDS)),
            int(props.get("disk-mib", NATIVE_DISK_MIB)),
        )


# -------------------------------------------------------------------- unpack

UNPACK_PROGRAM = "kiln-unpack"


def unpack_argv(path: str, strip: int) -> list[str]:
    """The command of an unpack step: the archive at ``path`` in its inputs,
    without its first ``strip`` path components."""
    return [UNPACK_PROGRAM, f"--strip={strip}", "--", path]


# --------------------------------------------------------------------- fetch

FETCH_PROGRAM = "kiln-fetch"
FETCH_KINDS = ("url", "npm", "pypi", "git")
FETCH_MODES = ("file", "tree")
UNPINNED = "unpinned"
URL_SCHEMES = ("http", "https")
_HEX = {"sha256": 64, "sha512": 128}


def parse_pin(text: str, where: str) -> str:
    """A pinned digest in canonical form, ``sha256:<hex>`` or ``sha512:<hex>``.
    Accepts that form, a bare SHA-256 in hex, and subresource-integrity
    strings (``sha512-<base64>``, as npm lock files write them)."""
    text = text.strip()
    algorithm, sep, value = text.partition(":")
    if not sep:
        algorithm, sep, value = text.partition("-")
        if sep and algorithm in _HEX:
            try:
                value = base64.b64decode(value, validate=True).hex()
            except (binascii.Error, ValueError):
                value = ""
        elif re.fullmatch(r"[0-9a-fA-F]{64}", text):
            algorithm, value = "sha256", text
    value = value.lower()
    if algorithm not in _HEX or not re.fullmatch(f"[0-9a-f]{{{_HEX[algorithm]}}}", value):
        raise errors.KilnError(
            f"{where}: malformed digest {text!r}",
            hint="write sha256:<64 hex digits>, sha512:<128 hex digits> or an integrity "
            "string like sha512-<base64>; `kiln prefetch URL` prints the digest to pin",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return f"{algorithm}:{value}"


def url_file_name(url: str) -> str:
    """The last segment of the URL's path ("" if it ends in a slash)."""
    return posixpath.basename(urllib.parse.urlsplit(url).path)


def check_url(url: str, where: str) -> None:
    """Refuse URLs Kiln cannot or must not fetch, with a clear reason."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in URL_SCHEMES:
        raise errors.KilnError(
            f"{where}: unsupported URL scheme {parts.scheme or '(none)'!r} in {url!r}",
            hint="fetch over http:// or https://",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    if parts.username or parts.password:
        raise errors.KilnError(
            f"{where}: the URL carries credentials; they would end up in the step's key",
            hint="declare them with auth=... (a netrc file or environment variables)",
            exit_code=errors.ExitCode.BAD_INPUT,
        )


@dataclass(frozen=True)
class Auth:
    """How a fetch proves who it is, by reference: ``bearer:VAR``,
    ``basic:USER_VAR:PASSWORD_VAR`` or ``netrc``. Only these names are part
    of a step; the values are read when the request is made
    (``kiln.exec.download.auth_header``)."""

    spec: str

    @staticmethod
    def parse(spec: str, where: str) -> Auth:
        kind, _, rest = spec.partition(":")
        names = rest.split(":") if rest else []
        ok = (kind == "bearer" and len(names) == 1) or (kind == "basic" and len(names) == 2)
        if not (ok and all(n.isidentifier() for n in names)) and spec != "netrc":
            raise errors.KilnError(
                f"{where}: unknown credential {spec!r}",
                hint="use fetch.bearer('ENV_VAR'), fetch.basic('USER_VAR', 'PASSWORD_VAR') "
                "or fetch.netrc()",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        return Auth(spec)


@dataclass(frozen=True)
class FetchSpec:
    """What a fetch step gets; all of it (credential names, not values) is in
    its command and so in its key."""

    kind: str
    mode: str
    pin: str  # canonical pin, or UNPINNED
    name: str  # the output's path
    sources: tuple[str, ...]  # URLs (mirrors), or the registry / index / repository
    package: str = ""
    version: str = ""
    filename: str = ""
    rev: str = ""
    strip: int = 0
    auth: tuple[str, ...] = field(default=())

    def argv(self) -> list[str]:
        options = [f"--kind={self.kind}", f"--mode={self.mode}", f"--pin={self.pin}",
                   f"--name={self.name}", f"--strip={self.strip}"]  # fmt: skip
        for key in ("package", "version", "filename", "rev"):
            if getattr(self, key):
                options.append(f"--{key}={getattr(self, key)}")
        options += [f"--auth={a}" for a in self.auth]
        return [FETCH_PROGRAM, *options, "--", *self.sources]

    @staticmethod
    def from_argv(argv: list[str]) -> FetchSpec:
        if not argv or argv[0] != FETCH_PROGRAM or "--" not in argv:
            raise errors.KilnError(f"not a fetch command: {argv[:3]}")
        split = argv.index("--")
        values: dict[str, object] = {"auth": []}
        for option in argv[1:split]:
            key, _, value = option[2:].partition("=")
            if key == "auth":
                values["auth"].append(value)  # type: ignore[attr-defined]
            else:
                values[key] = int(value) if key == "strip" else value
        values["auth"] = tuple(values["auth"])  # type: ignore[arg-type]
        return FetchSpec(sources=tuple(argv[split + 1 :]), **values)  # type: ignore[arg-type]

    def platform(self) -> tuple[tuple[str, str], ...]:
        return (("kiln-abi", FETCH_ABI), ("mode", self.mode), ("pin", self.pin))

    def check(self, where: str) -> None:
        """Clear errors for what cannot be fetched, before anything runs."""
        if self.kind not in FETCH_KINDS or self.mode not in FETCH_MODES:
            raise errors.KilnError(f"{where}: unknown fetch {self.kind}/{self.mode}")
        if self.kind == "git" and self.mode != "tree":
            raise errors.KilnError(f"{where}: a git fetch is always hashed as a tree")
        if self.pin != UNPINNED and self.mode == "tree" and not self.pin.startswith("sha256:"):
            raise errors.KilnError(
                f"{where}: a tree is pinned by its sha256 digest, not {self.pin.split(':')[0]}",
                hint="`kiln prefetch --unpack URL` prints it",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        if not self.sources:
            raise errors.KilnError(f"{where}: nothing to fetch from", exit_code=2)
        for url in self.sources:
            if self.kind != "git":
                check_url(url, where)
            elif urllib.parse.urlsplit(url).password:
                raise errors.KilnError(
                    f"{where}: the repository URL carries a password; it would be in the key",
                    hint="use a git credential helper or an SSH key instead",
                    exit_code=errors.ExitCode.BAD_INPUT,
                )
        for a in self.auth:
            Auth.parse(a, where)
        name_ok = self.name and "/" not in self.name and self.name not in (".", "..")
        if not name_ok:
            raise errors.KilnError(
                f"{where}: fetch name {self.name!r} must be a plain file name",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
