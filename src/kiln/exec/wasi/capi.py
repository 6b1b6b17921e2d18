"""Host functions and guest memory through Wasmtime's C API directly.

A compile inside wasm makes thousands of WASI calls (clang writes an object
file a few bytes at a time). wasmtime-py's generic path wraps every call in
Python objects (a ``Caller``, a ``Val`` per parameter, a type check of the
result) and every memory access in a slice and a ctypes array type; that
overhead was about a third of a small compile. Here host functions are
"unchecked" ones, which take and return raw values, and guest memory is
read and written at its base address, looked up once per call (memory
cannot move while a host function runs).

Uses the C library that the pinned ``wasmtime`` package loads; its own
function objects are left untouched (these are separate handles to the
same symbols).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from wasmtime import FuncType, Linker, Memory, ValType
from wasmtime import _ffi as ffi

_vp, _sz = ctypes.c_void_p, ctypes.c_size_t
_U32, _U64 = (1 << 32) - 1, (1 << 64) - 1


def _symbol(name: str, restype: Any, *argtypes: Any) -> Any:
    fn = ffi.dll[name]  # indexing makes a new handle: wasmtime-py's stays as it is
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


Callback = ctypes.CFUNCTYPE(_sz, _vp, _vp, ctypes.POINTER(ffi.wasmtime_val_raw), _sz)
_define_unchecked = _symbol(
    "wasmtime_linker_define_func_unchecked",
    _vp, _vp, ctypes.c_char_p, _sz, ctypes.c_char_p, _sz, _vp, Callback, _vp, _vp,
)  # fmt: skip
_memory_data = _symbol("wasmtime_memory_data", _vp, _vp, _vp)
_memory_size = _symbol("wasmtime_memory_data_size", _sz, _vp, _vp)
_trap_new = _symbol("wasmtime_trap_new", _vp, ctypes.c_char_p, _sz)
_get_fuel = _symbol("wasmtime_context_get_fuel", _vp, _vp, ctypes.POINTER(ctypes.c_uint64))
_set_fuel = _symbol("wasmtime_context_set_fuel", _vp, _vp, ctypes.c_uint64)
_error_delete = _symbol("wasmtime_error_delete", None, _vp)

# Host functions must outlive every linker that refers to them.
_KEEP: list[Any] = []

# What a host function returns to make the guest trap; the Python exception
# that caused it is handed to ``on_error`` first.
_TRAP_MESSAGE = b"kiln: host function raised"


def define(
    linker: Linker,
    module: str,
    name: str,
    params: str,
    has_result: bool,
    func: Callable[..., int | None],
    on_error: Callable[[BaseException], None],
) -> None:
    """Define ``module.name`` in ``linker`` as ``func``: ``params`` has one
    letter per parameter (``i`` i32, ``I`` i64), the result is one i32 or
    none. Arguments are passed unsigned, as WASI's types are. An exception
    from ``func`` goes to ``on_error`` and traps the guest."""
    wide = tuple(c == "I" for c in params)
    i32, i64 = ValType.i32(), ValType.i64()
    ty = FuncType([i64 if w else i32 for w in wide], [i32] if has_result else [])

    def call(_env: Any, _caller: Any, values: Any, _count: int) -> int:
        try:
            args = [values[i].i64 & _U64 if w else values[i].i32 & _U32 for i, w in enumerate(wide)]
            result = func(*args)
            if has_result:
                values[0].i32 = result
            return 0
        except BaseException as e:  # handed over, then the guest traps
            on_error(e)
            return _trap_new(_TRAP_MESSAGE, len(_TRAP_MESSAGE))

    callback = Callback(call)
    _KEEP.append((callback, ty))
    mod, nm = module.encode(), name.encode()
    error = _define_unchecked(
        ctypes.cast(linker.ptr(), _vp), mod, len(mod), nm, len(nm),
        ctypes.cast(ty.ptr(), _vp), callback, None, None,
    )  # fmt: skip
    if error:
        raise RuntimeError(f"could not define {module}.{name}")


class GuestMemory:
    """Reads and writes one instance's linear memory."""

    def __init__(self, context: Any, memory: Memory) -> None:
        self._context = ctypes.cast(context._context(), _vp).value
        self._memory = ctypes.addressof(memory._memory)

    def read(self, ptr: int, length: int) -> bytes | None:
        """``length`` bytes at ``ptr``, or None if outside the memory."""
        return self.window().read(ptr, length)

    def write(self, ptr: int, data: bytes) -> bool:
        """Write ``data`` at ``ptr``; False if it does not fit."""
        return self.window().write(ptr, data)

    def window(self) -> Window:
        """The memory as it is now: valid until the guest runs again (a host
        function that touches memory several times looks it up once)."""
        return Window(
            _memory_data(self._context, self._memory), _memory_size(self._context, self._memory)
        )


class Window:
    """Guest memory at one moment: its base address and size."""

    __slots__ = ("base", "size")

    def __init__(self, base: int, size: int) -> None:
        self.base, self.size = base, size

    def read(self, ptr: int, length: int) -> bytes | None:
        if ptr < 0 or ptr + length > self.size:
            return None
        return ctypes.string_at(self.base + ptr, length) if length else b""

    def write(self, ptr: int, data: bytes) -> bool:
        if ptr < 0 or ptr + len(data) > self.size:
            return False
        ctypes.memmove(self.base + ptr, data, len(data))
        return True


class Fuel:
    """Reads and sets a store's fuel (also while one of its host functions
    runs: the guest's count is in the store's context then)."""

    def __init__(self, context: Any) -> None:
        self._context = ctypes.cast(context._context(), _vp).value
        self._value = ctypes.c_uint64()

    def get(self) -> int:
        _checked(_get_fuel(self._context, ctypes.byref(self._value)))
        return self._value.value

    def set(self, fuel: int) -> None:
        _checked(_set_fuel(self._context, fuel))


def _checked(error: int | None) -> None:
    if error:
        _error_delete(error)
        raise RuntimeError("fuel is not enabled for this store")
