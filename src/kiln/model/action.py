"""Actions from a friendly spec: ``ActionSpec`` -> REAPI ``Command`` + ``Action``.

The spec is a frozen dataclass that normalizes what it is given (argv as a
tuple, environment and platform sorted by name, output paths sorted and
checked), so two specs that mean the same execution produce the same bytes
and therefore the same key. Fields that describe rather than define an
execution (``description``) are excluded from comparison and from the key,
and so is ``timeout``, a wall-clock limit of the host that runs it: the
action an executor is handed carries it in REAPI's ``Action.timeout``
(``timed``), the key is that of the action without it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kiln.model.digest import Digest, canonical_bytes
from kiln.model.reapi import re_pb2

Pairs = tuple[tuple[str, str], ...]


def _pairs(value: Mapping[str, str] | Sequence[tuple[str, str]], what: str) -> Pairs:
    items = list(value.items()) if isinstance(value, Mapping) else [tuple(p) for p in value]
    names = [k for k, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: a name is given twice")
    for k, v in items:
        if not isinstance(k, str) or not isinstance(v, str) or not k:
            raise ValueError(f"{what}: invalid entry {k!r}={v!r}")
        _refuse_nul(f"{what} {k!r}", k + v)
        if what == "env" and "=" in k:
            raise ValueError(f"env: a variable name cannot contain '=': {k!r}")
    return tuple(sorted(items))  # type: ignore[arg-type]


def _refuse_nul(what: str, text: str) -> None:
    """A NUL byte cannot pass through a program's argv or environment (nor
    REAPI strings meaningfully): refused rather than cut short or split."""
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL byte: {text!r}")


def _output_path(path: str) -> str:
    _refuse_nul("output path", path)
    norm = posixpath.normpath(path)
    if not path or path.startswith("/") or norm == "." or norm.startswith("../") or norm == "..":
        raise ValueError(f"output path {path!r} must be relative and stay inside the action")
    return norm


@dataclass(frozen=True)
class ActionSpec:
    """One execution, completely described. Its ``key()`` is the action digest."""

    argv: tuple[str, ...]
    input_root: Digest
    env: Pairs = ()
    outputs: tuple[str, ...] = ()
    platform: Pairs = ()
    working_directory: str = ""
    salt: bytes = b""
    description: str = field(default="", compare=False)
    timeout: float | None = field(default=None, compare=False)  # seconds; None: the default

    def __post_init__(self) -> None:
        if isinstance(self.argv, str | bytes):
            raise TypeError("argv must be a sequence of arguments, not one string")
        argv = tuple(self.argv)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a non-empty sequence of strings")
        for i, arg in enumerate(argv):
            _refuse_nul(f"argv[{i}]", arg)
        _refuse_nul("working directory", self.working_directory)
        object.__setattr__(self, "argv", argv)
        object.__setattr__(self, "env", _pairs(self.env, "env"))
        object.__setattr__(self, "platform", _pairs(self.platform, "platform"))
        outputs = sorted({_output_path(p) for p in self.outputs})
        object.__setattr__(self, "outputs", tuple(outputs))

    def command(self) -> re_pb2.Command:
        return re_pb2.Command(
            arguments=self.argv,
            environment_variables=[
                re_pb2.Command.EnvironmentVariable(name=k, value=v) for k, v in self.env
            ],
            output_paths=self.outputs,
            working_directory=self.working_directory,
        )

    def action(self) -> tuple[re_pb2.Action, re_pb2.Command]:
        command = self.command()
        action = re_pb2.Action(
            command_digest=Digest.of_message(command).to_proto(),
            input_root_digest=self.input_root.to_proto(),
            salt=self.salt,
            platform=re_pb2.Platform(
                properties=[re_pb2.Platform.Property(name=k, value=v) for k, v in self.platform]
            ),
        )
        return action, command

    def timed(self, action: re_pb2.Action) -> re_pb2.Action:
        """``action`` (this spec's, without timeout) as an executor is handed
        it: with this spec's timeout, if it has one. Never stored or keyed."""
        if self.timeout is None:
            return action
        timed = re_pb2.Action()
        timed.CopyFrom(action)
        timed.timeout.FromNanoseconds(round(self.timeout * 1e9))
        return timed

    def key(self) -> Digest:
        action, _ = self.action()
        return Digest.of_bytes(canonical_bytes(action))


def shareable(platform: Mapping[str, str]) -> bool:
    """Whether a result may go to a shared cache by default: not when its
    step read secrets (its platform names them), since what it produced may
    carry them (a signature, a token baked into a file)."""
    return not platform.get("secrets")
