"""The ``kiln`` import module: what a guest calls to make memoized calls.

Part of the wasm contract (``kiln.exec.kinds.WASM_ABI``); its own version
is ``kiln.exec.wasm_calls.CALLS_VERSION``. Every function returns a WASI
errno (0 on success); sizes, handles and statuses are u32 written at the
pointers given.

For a caller:

    call_start(module, module_len, export, export_len, input, input_len, *handle)
        Start calling ``export`` of ``module`` on the input bytes. ``module``
        is a path in the guest's file system (an input file, or a file the
        guest wrote) or ``digest:HASH/SIZE``. ENOENT: no such module file;
        EINVAL: a malformed name; EMFILE: ``MAX_OPEN_CALLS`` handles open.
    call_wait(handle, *status, *output_size)
        Wait for the call; ``status`` is 0 when the export returned, its
        exit code when it called ``proc_exit``, 134 when it trapped or ran
        out of a limit. The caller is charged the fuel the call consumed
        (the first time it waits), and runs out of fuel here if it has
        less left: the same whether the call ran or was cached.
    call_read(handle, which, buf, len, *copied)
        Copy the call's output (``which`` 0), stdout (1) or stderr (2),
        up to ``len`` bytes. The call must have been waited for.
    call_release(handle)
        Forget the handle; a call started and never waited for is
        cancelled when the guest ends.

Inside a call:

    input_size(*size), input_read(buf, offset, len, *copied)
        The call's input. ENOTSUP outside a call.
    output_write(buf, len)
        Append to the call's output (at most ``OUTPUT_CAP`` bytes: beyond,
        the call traps). ENOTSUP outside a call.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiln import errors
from kiln.exec.wasi import abi
from kiln.exec.wasi.vfs import File, WasiError
from kiln.exec.wasm_calls import MAX_OPEN_CALLS, OUTPUT_CAP, CallOutcome, CallRecord, Pending
from kiln.model.digest import Digest

if TYPE_CHECKING:
    from kiln.exec.wasi.host import WasiHost
    from kiln.exec.wasm_calls import StepCalls

SIGNATURES = {
    "call_start": "iiiiiii",
    "call_wait": "iii",
    "call_read": "iiiii",
    "call_release": "i",
    "input_size": "i",
    "input_read": "iiii",
    "output_write": "ii",
}
DIGEST_PREFIX = "digest:"


class OutOfFuel(Exception):
    """The caller had less fuel left than a call it waited for consumed."""


class OutputTooLarge(Exception):
    """A call wrote more than ``OUTPUT_CAP`` bytes of output."""


@dataclass
class _Open:
    record: CallRecord
    pending: Pending
    outcome: CallOutcome | None = None


class KilnImports:
    """The ``kiln`` functions for one guest run: a step's, or a call's
    (``call_input`` set, ``output`` collecting what it gives back)."""

    def __init__(
        self, host: WasiHost, calls: StepCalls | None, call_input: bytes | None = None
    ) -> None:
        self._host = host
        self._calls = calls
        self._input = call_input
        self.output = bytearray()
        self._open: dict[int, _Open] = {}
        self._next_handle = 1

    # ------------------------------------------------------------ calling

    def call_start(
        self, module_ptr: int, module_len: int, export_ptr: int, export_len: int,
        input_ptr: int, input_len: int, handle_ptr: int,
    ) -> None:  # fmt: skip
        if self._calls is None:
            raise WasiError(abi.ENOTSUP)
        if len(self._open) >= MAX_OPEN_CALLS:
            raise WasiError(abi.EMFILE)
        module = self._module(self._host.read_str(module_ptr, module_len))
        export = self._host.read_str(export_ptr, export_len)
        if not export or "\0" in export:
            raise WasiError(abi.EINVAL)
        data = self._host.read_bytes(input_ptr, input_len)
        handle = self._next_handle
        self._host.write_u32(handle_ptr, handle)  # (before starting: EFAULT starts nothing)
        record, pending = self._calls.start(module, export, data)
        self._next_handle += 1
        self._open[handle] = _Open(record, pending)

    def _module(self, name: str) -> Digest:
        """The module a guest names: by digest, or by a file it can see."""
        assert self._calls is not None
        if name.startswith(DIGEST_PREFIX):
            try:
                return Digest.parse(name[len(DIGEST_PREFIX) :])
            except errors.KilnError:
                raise WasiError(abi.EINVAL) from None
        fs = self._host.fs
        _, _, node = fs.resolve(fs.root, name, follow=True)
        if not isinstance(node, File):
            raise WasiError(abi.ENOENT if node is None else abi.EINVAL)
        if node.blob is not None:
            return node.blob
        return self._calls.cas.put_bytes(fs.read(node, 0, node.size()))  # a module it wrote

    def call_wait(self, handle: int, status_ptr: int, size_ptr: int) -> None:
        entry = self._entry(handle)
        if entry.outcome is None:
            outcome = entry.pending.wait()
            self._charge(outcome.fuel)
            entry.outcome = outcome
            assert self._calls is not None
            self._calls.finished(entry.record, outcome)
        self._host.write_u32(status_ptr, entry.outcome.status)
        self._host.write_u32(size_ptr, len(entry.outcome.output))

    def _charge(self, fuel: int) -> None:
        store = self._host.store
        left = store.get_fuel()
        if fuel > left:
            store.set_fuel(0)
            raise OutOfFuel()
        store.set_fuel(left - fuel)

    def call_read(self, handle: int, which: int, buf: int, length: int, copied_ptr: int) -> None:
        outcome = self._entry(handle).outcome
        if outcome is None:
            raise WasiError(abi.EINVAL)  # not waited for yet
        streams = (outcome.output, outcome.stdout, outcome.stderr)
        if which >= len(streams):
            raise WasiError(abi.EINVAL)
        data = streams[which][:length]
        self._host.write_bytes(buf, data)
        self._host.write_u32(copied_ptr, len(data))

    def call_release(self, handle: int) -> None:
        self._entry(handle)
        del self._open[handle]

    def _entry(self, handle: int) -> _Open:
        entry = self._open.get(handle)
        if entry is None:
            raise WasiError(abi.EBADF)
        return entry

    def cancel_open(self) -> None:
        """The guest ended: drop the calls it never waited for, and wait
        for those already running (they use this step's scratch space)."""
        assert self._calls is not None or not self._open
        for entry in self._open.values():
            self._calls.abandon(entry.record.key, entry.pending)  # type: ignore[union-attr]
        for entry in self._open.values():
            if not entry.pending.finished:
                with contextlib.suppress(Exception):  # nobody waits for its outcome any more
                    entry.pending.wait()
        self._open.clear()

    # ------------------------------------------------------- inside a call

    def input_size(self, size_ptr: int) -> None:
        self._host.write_u32(size_ptr, len(self._called_input()))

    def input_read(self, buf: int, offset: int, length: int, copied_ptr: int) -> None:
        data = self._called_input()[offset : offset + length]
        self._host.write_bytes(buf, data)
        self._host.write_u32(copied_ptr, len(data))

    def _called_input(self) -> bytes:
        if self._input is None:
            raise WasiError(abi.ENOTSUP)
        return self._input

    def output_write(self, buf: int, length: int) -> None:
        if self._input is None:
            raise WasiError(abi.ENOTSUP)
        if len(self.output) + length > OUTPUT_CAP:
            raise OutputTooLarge()
        self.output += self._host.read_bytes(buf, length)
