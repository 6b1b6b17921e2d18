"""The ``kiln`` import module: what a guest calls to make memoized calls.

Part of the wasm contract (``kiln.exec.kinds.WASM_ABI``); its own version
is ``kiln.exec.wasm_calls.CALLS_VERSION``. Every function returns a WASI
errno (0 on success); sizes, handles and statuses are u32 written at the
pointers given.

For a caller:

    call(module, module_len, export, export_len, input, input_len,
         output, output_cap, *info)
        ``call_start`` and ``call_wait`` in one: writes up to ``output_cap``
        bytes of the output at ``output``, then at ``info`` three u32:
        status, output size, and a handle, 0 unless there is more to read
        (the output did not fit, or the call wrote to stdout or stderr),
        which the guest then reads and releases as below.
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

Steps (see ``kiln.exec.wasi.step_requests``; ENOTSUP inside a call):

    step_start(request, request_len, *handle)
        Ask the build for the step the JSON request describes. EINVAL: a
        malformed request; ENOENT: an input that is not there.
    step_wait(handle, *exit_code)
        Wait for it: its exit code; its outputs now appear read-only under
        the request's ``mount``. A request the build refuses, or no build
        to ask, fails the requesting step (an error, never a result).
    step_read(handle, which, buf, len, *copied)
        Its stdout (``which`` 1) or stderr (2), up to ``len`` bytes.
    step_release(handle)

Inside a call:

    input_size(*size), input_read(buf, offset, len, *copied)
        The call's input. ENOTSUP outside a call.
    output_write(buf, len)
        Append to the call's output (at most ``OUTPUT_CAP`` bytes: beyond,
        the call traps). ENOTSUP outside a call.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiln import errors
from kiln.exec.wasi import abi, capi
from kiln.exec.wasi.vfs import File, WasiError
from kiln.exec.wasm_calls import MAX_OPEN_CALLS, OUTPUT_CAP, CallOutcome, CallRecord, Pending
from kiln.model.digest import Digest

if TYPE_CHECKING:
    from kiln.exec.wasi.host import WasiHost
    from kiln.exec.wasi.step_requests import StepRequests
    from kiln.exec.wasm_calls import StepCalls

SIGNATURES = {
    "call": "iiiiiiiii",
    "call_start": "iiiiiii",
    "call_wait": "iii",
    "call_read": "iiiii",
    "call_release": "i",
    "input_size": "i",
    "input_read": "iiii",
    "output_write": "ii",
    "step_start": "iii",
    "step_wait": "ii",
    "step_read": "iiiii",
    "step_release": "i",
}
DIGEST_PREFIX = "digest:"


def _text(data: bytes | None) -> str:
    """A name a guest gave (EFAULT: outside its memory; EINVAL: not UTF-8)."""
    if data is None:
        raise WasiError(abi.EFAULT)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise WasiError(abi.EINVAL) from None


class OutOfFuel(Exception):
    """The caller had less fuel left than a call it waited for consumed."""


class OutputTooLarge(Exception):
    """A call wrote more than ``OUTPUT_CAP`` bytes of output."""


@dataclass
class _Open:
    record: CallRecord
    pending: Pending | None  # None: answered when started (``outcome``)
    outcome: CallOutcome | None = None
    charged: bool = False  # the caller paid the call's fuel


_INFO = struct.Struct("<III")  # what ``call`` writes: status, output size, handle


class KilnImports:
    """The ``kiln`` functions for one guest run: a step's, or a call's
    (``call_input`` set, ``output`` collecting what it gives back)."""

    def __init__(
        self, host: WasiHost, calls: StepCalls | None, call_input: bytes | None = None,
        steps: StepRequests | None = None,
    ) -> None:  # fmt: skip
        self._host = host
        self._calls = calls
        self._steps = steps
        self._input = call_input
        self.output = bytearray()
        self._open: dict[int, _Open] = {}
        self._next_handle = 1
        self._modules: dict[str, Digest] = {}  # input files named as modules
        self._fuel: capi.Fuel | None = None  # the guest's fuel, once a call is charged
        self._released: list[tuple[Digest, Pending]] = []  # released before they finished

    # ------------------------------------------------------------ calling

    def call_start(
        self, module_ptr: int, module_len: int, export_ptr: int, export_len: int,
        input_ptr: int, input_len: int, handle_ptr: int,
    ) -> None:  # fmt: skip
        handle = self._start(module_ptr, module_len, export_ptr, export_len, input_ptr, input_len)
        try:
            self._host.write_u32(handle_ptr, handle)
        except WasiError:
            self.call_release(handle)
            raise

    def call(
        self, module_ptr: int, module_len: int, export_ptr: int, export_len: int,
        input_ptr: int, input_len: int, output_ptr: int, output_cap: int, info_ptr: int,
    ) -> None:  # fmt: skip
        # The hot path of a memoized call: memory is looked up once (it
        # cannot move while this runs, and the call below runs no guest code
        # of this store).
        memory = self._host.window()
        module, export, data = (
            _text(memory.read(module_ptr, module_len)), _text(memory.read(export_ptr, export_len)),
            memory.read(input_ptr, input_len),
        )  # fmt: skip
        if data is None:
            raise WasiError(abi.EFAULT)
        handle = self._begin(module, export, data)
        outcome = self._wait(self._open[handle])
        output = outcome.output
        if len(output) <= output_cap and not outcome.stdout and not outcome.stderr:
            self.call_release(handle)
            handle = 0  # nothing more to read
        if not (
            memory.write(output_ptr, output[:output_cap])
            and memory.write(info_ptr, _INFO.pack(outcome.status, len(output), handle))
        ):
            raise WasiError(abi.EFAULT)

    def _start(
        self, module_ptr: int, module_len: int, export_ptr: int, export_len: int,
        input_ptr: int, input_len: int,
    ) -> int:  # fmt: skip
        module = self._host.read_str(module_ptr, module_len)
        export = self._host.read_str(export_ptr, export_len)
        return self._begin(module, export, self._host.read_bytes(input_ptr, input_len))

    def _begin(self, module_name: str, export: str, data: bytes) -> int:
        """Start a call; its handle."""
        if self._calls is None:
            raise WasiError(abi.ENOTSUP)
        if len(self._open) >= MAX_OPEN_CALLS:
            raise WasiError(abi.EMFILE)
        module = self._module(module_name)
        if not export or "\0" in export:
            raise WasiError(abi.EINVAL)
        record, answer = self._calls.start(module, export, data)
        handle = self._next_handle
        self._next_handle += 1
        if isinstance(answer, Pending):
            self._open[handle] = _Open(record, answer)
        else:
            self._open[handle] = _Open(record, None, answer, charged=False)
        return handle

    def _module(self, name: str) -> Digest:
        """The module a guest names: by digest, or by a file it can see."""
        assert self._calls is not None
        if name.startswith(DIGEST_PREFIX):
            try:
                return Digest.parse(name[len(DIGEST_PREFIX) :])
            except errors.KilnError:
                raise WasiError(abi.EINVAL) from None
        known = self._modules.get(name)
        if known is not None:
            return known
        fs = self._host.fs
        _, _, node = fs.resolve(fs.root, name, follow=True)
        if not isinstance(node, File):
            raise WasiError(abi.ENOENT if node is None else abi.EINVAL)
        if node.blob is None:  # a module it wrote (and may write again)
            return self._calls.cas.put_bytes(fs.read(node, 0, node.size()))
        if not node.writable:  # an input file: the name means this module for good
            self._modules[name] = node.blob
        return node.blob

    def call_wait(self, handle: int, status_ptr: int, size_ptr: int) -> None:
        outcome = self._wait(self._entry(handle))
        self._host.write_u32(status_ptr, outcome.status)
        self._host.write_u32(size_ptr, len(outcome.output))

    def _wait(self, entry: _Open) -> CallOutcome:
        """The call's outcome; the first time, the caller pays its fuel."""
        if entry.outcome is None:
            assert entry.pending is not None
            entry.outcome = entry.pending.wait()
        if not entry.charged:
            entry.charged = True
            self._charge(entry.outcome.fuel)
            assert self._calls is not None
            self._calls.finished(entry.record, entry.outcome)
        return entry.outcome

    def _charge(self, fuel: int) -> None:
        meter = self._fuel
        if meter is None:
            meter = self._fuel = capi.Fuel(self._host.store)
        left = meter.get()
        if fuel > left:
            meter.set(0)
            raise OutOfFuel()
        meter.set(left - fuel)

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
        entry = self._entry(handle)
        del self._open[handle]
        if entry.pending is not None and not entry.pending.finished:
            self._released.append((entry.record.key, entry.pending))

    def _entry(self, handle: int) -> _Open:
        entry = self._open.get(handle)
        if entry is None:
            raise WasiError(abi.EBADF)
        return entry

    def cancel_open(self) -> None:
        """The guest ended: drop the calls it never waited for, and wait
        for those already running (they use this step's scratch space)."""
        unfinished = self._released + [
            (e.record.key, e.pending)
            for e in self._open.values()
            if e.pending is not None and not e.pending.finished
        ]
        assert self._calls is not None or not unfinished
        for key, pending in unfinished:
            self._calls.abandon(key, pending)  # type: ignore[union-attr]
        for _, pending in unfinished:
            with contextlib.suppress(Exception):  # nobody waits for its outcome any more
                pending.wait()
        self._open.clear()
        self._released.clear()
        if self._steps is not None:
            self._steps.finish()

    # ------------------------------------------------------ requested steps

    def step_start(self, request_ptr: int, request_len: int, handle_ptr: int) -> None:
        steps = self._requests()
        handle = steps.start(self._host.read_bytes(request_ptr, request_len))
        try:
            self._host.write_u32(handle_ptr, handle)
        except WasiError:
            steps.release(handle)
            raise

    def step_wait(self, handle: int, exit_code_ptr: int) -> None:
        self._host.write_u32(exit_code_ptr, self._requests().wait(handle))

    def step_read(self, handle: int, which: int, buf: int, length: int, copied_ptr: int) -> None:
        data = self._requests().read(handle, which)[:length]
        self._host.write_bytes(buf, data)
        self._host.write_u32(copied_ptr, len(data))

    def step_release(self, handle: int) -> None:
        self._requests().release(handle)

    def _requests(self) -> StepRequests:
        if self._steps is None:
            raise WasiError(abi.ENOTSUP)  # inside a memoized call
        return self._steps

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
