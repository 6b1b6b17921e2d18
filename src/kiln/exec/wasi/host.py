"""The ``wasi_snapshot_preview1`` imports, implemented over ``FileSystem``.

Determinism contract (version ``ABI_VERSION``; change it with any change
a guest could observe):
- argv and environment are exactly the action's;
- ``clock_time_get``: the realtime clock always reads ``REALTIME_EPOCH_NS``;
  the monotonic and CPU-time clocks start at 0 and advance by
  ``MONOTONIC_STEP_NS`` per reading (and by the timeout of a virtual sleep);
- ``random_get``: SHA-256 in counter mode over a seed derived from the
  action key;
- directory listings are sorted by name, inode numbers are assigned in order
  of first lookup, every timestamp is ``REALTIME_EPOCH_NS``;
- stdin is empty; no sockets, no threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import wasmtime

from kiln.exec.kinds import WASM_ABI
from kiln.exec.wasi import abi, capi
from kiln.exec.wasi.disk import Content
from kiln.exec.wasi.kiln_imports import SIGNATURES as KILN_SIGNATURES
from kiln.exec.wasi.vfs import Dir, File, FileSystem, Node, Symlink, WasiError, filetype

if TYPE_CHECKING:
    from kiln.exec.wasi.kiln_imports import KilnImports

ABI_VERSION = WASM_ABI  # (named in the table of executor kinds)
REALTIME_EPOCH_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z
MONOTONIC_STEP_NS = 1_000
OUTPUT_CAP = 64 << 20  # stdout and stderr each keep at most this many bytes
KILN_MODULE = "kiln"  # the import module of memoized calls (kiln_imports.py)
IMPORT_MODULES = frozenset({"wasi_snapshot_preview1", KILN_MODULE})

# Signatures: one letter per parameter, i = i32, I = i64; results are one i32
# (the errno) except for proc_exit.
SIGNATURES = {
    "args_get": "ii",
    "args_sizes_get": "ii",
    "environ_get": "ii",
    "environ_sizes_get": "ii",
    "clock_res_get": "ii",
    "clock_time_get": "iIi",
    "fd_advise": "iIIi",
    "fd_allocate": "iII",
    "fd_close": "i",
    "fd_datasync": "i",
    "fd_fdstat_get": "ii",
    "fd_fdstat_set_flags": "ii",
    "fd_fdstat_set_rights": "iII",
    "fd_filestat_get": "ii",
    "fd_filestat_set_size": "iI",
    "fd_filestat_set_times": "iIIi",
    "fd_pread": "iiiIi",
    "fd_prestat_get": "ii",
    "fd_prestat_dir_name": "iii",
    "fd_pwrite": "iiiIi",
    "fd_read": "iiii",
    "fd_readdir": "iiiIi",
    "fd_renumber": "ii",
    "fd_seek": "iIii",
    "fd_sync": "i",
    "fd_tell": "ii",
    "fd_write": "iiii",
    "path_create_directory": "iii",
    "path_filestat_get": "iiiii",
    "path_filestat_set_times": "iiiiIIi",
    "path_link": "iiiiiii",
    "path_open": "iiiiiIIii",
    "path_readlink": "iiiiii",
    "path_remove_directory": "iii",
    "path_rename": "iiiiii",
    "path_symlink": "iiiii",
    "path_unlink_file": "iii",
    "poll_oneoff": "iiii",
    "proc_exit": "i",
    "proc_raise": "i",
    "sched_yield": "",
    "random_get": "ii",
    "sock_accept": "iii",
    "sock_recv": "iiiiii",
    "sock_send": "iiiii",
    "sock_shutdown": "ii",
}


def make_linker(engine: Any, current: Callable[[], WasiHost]) -> Any:
    """A Linker with every ``wasi_snapshot_preview1`` import, each forwarding
    to the host ``current()`` returns. Built once per process: defining the
    imports costs far more than a small guest's whole run."""
    linker = wasmtime.Linker(engine)

    def fail(error: BaseException) -> None:
        current().failure = error

    for name, sig in SIGNATURES.items():

        def forward(*args: int, _name: str = name) -> int | None:
            return current().call(_name, args)

        has_result = name != "proc_exit"
        capi.define(linker, "wasi_snapshot_preview1", name, sig, has_result, forward, fail)
    for name, sig in KILN_SIGNATURES.items():

        def forward_kiln(*args: int, _name: str = name) -> int | None:
            return current().call_kiln(_name, args)

        capi.define(linker, KILN_MODULE, name, sig, True, forward_kiln, fail)
    return linker


def _errno_of(function: Callable[..., int | None], args: tuple[int, ...]) -> int:
    try:
        result = function(*args)
    except WasiError as e:
        return e.errno
    except (IndexError, ValueError):
        return abi.EFAULT
    return abi.SUCCESS if result is None else result


class ProcExit(Exception):
    """Raised by ``proc_exit`` to unwind the guest."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class OpenFile:
    node: Node
    dir_path: str = ""  # for preopens: the name the guest sees
    offset: int = 0
    append: bool = False
    cookie_names: list[str] | None = None  # directory listing snapshot


class _Stream:
    """stdout/stderr: captured in memory up to ``OUTPUT_CAP`` bytes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.truncated = False

    def write(self, chunk: bytes) -> None:
        room = OUTPUT_CAP - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk


class WasiHost:
    """One guest run's view of the world. ``define(linker)`` installs it."""

    def __init__(
        self, fs: FileSystem, argv: list[str], env: list[tuple[str, str]], seed: bytes
    ) -> None:
        self.fs = fs
        self._argv = [a.encode() + b"\0" for a in argv]
        self._env = [f"{k}={v}".encode() + b"\0" for k, v in env]
        self._seed = hashlib.sha256(b"kiln-random\0" + seed).digest()
        self._random_counter = 0
        self._random_pool = b""
        self._monotonic = 0
        self.stdout = _Stream()
        self.stderr = _Stream()
        self.fds: dict[int, OpenFile | None] = {0: None, 1: None, 2: None}
        self.fds[3] = OpenFile(fs.root, dir_path="/")
        self._memory: Any = None  # a capi.GuestMemory once bound
        self.failure: BaseException | None = None  # what a host function raised
        self.store: Any = None  # the wasmtime Store the guest runs in, once running
        self.kiln: KilnImports | None = None  # the ``kiln`` imports (None: they fail)

    # ----------------------------------------------------------------- glue

    def bind(self, store: Any, memory: Any) -> None:
        """Use ``memory`` of ``store`` from now on. Until then (while the
        module is instantiated) calls that touch memory fail with EFAULT."""
        self._memory = capi.GuestMemory(store, memory)

    def call(self, name: str, args: tuple[int, ...]) -> int | None:
        """Run import ``name`` for the guest; WASI errors become errnos."""
        return _errno_of(getattr(self, name), args)

    def call_kiln(self, name: str, args: tuple[int, ...]) -> int | None:
        """Run ``kiln`` import ``name`` for the guest (ENOSYS: none here)."""
        if self.kiln is None:
            return abi.ENOSYS
        return _errno_of(getattr(self.kiln, name), args)

    def window(self) -> capi.Window:
        """Guest memory for one host call (EFAULT before it is bound)."""
        if self._memory is None:
            raise WasiError(abi.EFAULT)
        return self._memory.window()

    # For the ``kiln`` imports: guest memory, WASI errors on a bad pointer.
    def read_bytes(self, ptr: int, length: int) -> bytes:
        return self._read(ptr, length)

    def read_str(self, ptr: int, length: int) -> str:
        return self._str(ptr, length)

    def write_bytes(self, ptr: int, data: bytes) -> None:
        self._write(ptr, data)

    def write_u32(self, ptr: int, value: int) -> None:
        self._u32(ptr, value)

    def _read(self, ptr: int, length: int) -> bytes:
        if length == 0:
            return b""
        data = self._memory.read(ptr, length) if self._memory is not None else None
        if data is None:
            raise WasiError(abi.EFAULT)
        return data

    def _write(self, ptr: int, data: bytes) -> None:
        if data and (self._memory is None or not self._memory.write(ptr, bytes(data))):
            raise WasiError(abi.EFAULT)

    def _u32(self, ptr: int, value: int) -> None:
        self._write(ptr, value.to_bytes(4, "little"))

    def _u64(self, ptr: int, value: int) -> None:
        self._write(ptr, value.to_bytes(8, "little"))

    def _str(self, ptr: int, length: int) -> str:
        try:
            return self._read(ptr, length).decode()
        except UnicodeDecodeError:
            raise WasiError(abi.EINVAL) from None

    def _fd(self, fd: int) -> OpenFile:
        of = self.fds.get(fd)
        if of is None:
            raise WasiError(abi.EBADF)
        return of

    def _dir_fd(self, fd: int) -> Dir:
        node = self._fd(fd).node
        if not isinstance(node, Dir):
            raise WasiError(abi.ENOTDIR)
        return node

    # ------------------------------------------------------- args, env, time

    def _list_get(self, items: list[bytes], ptrs: int, buf: int) -> None:
        for item in items:
            self._u32(ptrs, buf)
            self._write(buf, item)
            ptrs += 4
            buf += len(item)

    def args_get(self, argv: int, buf: int) -> None:
        self._list_get(self._argv, argv, buf)

    def args_sizes_get(self, count_ptr: int, size_ptr: int) -> None:
        self._u32(count_ptr, len(self._argv))
        self._u32(size_ptr, sum(map(len, self._argv)))

    def environ_get(self, env: int, buf: int) -> None:
        self._list_get(self._env, env, buf)

    def environ_sizes_get(self, count_ptr: int, size_ptr: int) -> None:
        self._u32(count_ptr, len(self._env))
        self._u32(size_ptr, sum(map(len, self._env)))

    def clock_res_get(self, clock: int, res_ptr: int) -> None:
        if clock not in (0, 1, 2, 3):
            raise WasiError(abi.EINVAL)
        self._u64(res_ptr, MONOTONIC_STEP_NS)

    def clock_time_get(self, clock: int, _precision: int, time_ptr: int) -> None:
        if clock == abi.CLOCK_REALTIME:
            self._u64(time_ptr, REALTIME_EPOCH_NS)
        elif clock in (abi.CLOCK_MONOTONIC, abi.CLOCK_PROCESS_CPUTIME, abi.CLOCK_THREAD_CPUTIME):
            self._monotonic += MONOTONIC_STEP_NS
            self._u64(time_ptr, self._monotonic)
        else:
            raise WasiError(abi.EINVAL)

    def random_get(self, buf: int, length: int) -> None:
        while len(self._random_pool) < length:
            block = self._seed + self._random_counter.to_bytes(8, "little")
            self._random_pool += hashlib.sha256(block).digest()
            self._random_counter += 1
        self._write(buf, self._random_pool[:length])
        self._random_pool = self._random_pool[length:]

    def poll_oneoff(self, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int) -> None:
        if count == 0:
            raise WasiError(abi.EINVAL)
        data = self._read(in_ptr, count * abi.SUBSCRIPTION_SIZE)
        events = []
        longest = 0
        for i in range(count):
            userdata, tag, _clock, timeout, _flags = abi.subscription(
                data, i * abi.SUBSCRIPTION_SIZE
            )
            if tag == abi.EVENTTYPE_CLOCK:
                longest = max(longest, timeout)
            events.append(abi.event(userdata, abi.SUCCESS, tag))
        self._monotonic += longest  # a virtual sleep takes no real time
        self._write(out_ptr, b"".join(events))
        self._u32(nevents_ptr, len(events))

    def proc_exit(self, code: int) -> None:
        raise ProcExit(code)

    def proc_raise(self, _sig: int) -> int:
        return abi.ENOSYS

    def sched_yield(self) -> None:
        return None

    # ------------------------------------------------------------- sockets

    def sock_accept(self, *_: int) -> int:
        return abi.ENOTSUP

    sock_recv = sock_send = sock_shutdown = sock_accept

    # ------------------------------------------------------ descriptors

    def fd_prestat_get(self, fd: int, ptr: int) -> None:
        of = self._fd(fd)
        if not of.dir_path:
            raise WasiError(abi.EBADF)
        self._write(ptr, abi.prestat_dir(len(of.dir_path.encode())))

    def fd_prestat_dir_name(self, fd: int, ptr: int, length: int) -> None:
        of = self._fd(fd)
        if not of.dir_path:
            raise WasiError(abi.EBADF)
        self._write(ptr, of.dir_path.encode()[:length])

    def fd_fdstat_get(self, fd: int, ptr: int) -> None:
        if fd in (0, 1, 2):
            self._write(ptr, abi.fdstat(abi.FILETYPE_CHARACTER_DEVICE, 0))
            return
        of = self._fd(fd)
        self._write(ptr, abi.fdstat(filetype(of.node), abi.FDFLAGS_APPEND if of.append else 0))

    def fd_fdstat_set_flags(self, fd: int, flags: int) -> None:
        if fd not in (0, 1, 2):
            self._fd(fd).append = bool(flags & abi.FDFLAGS_APPEND)

    def fd_fdstat_set_rights(self, fd: int, _base: int, _inheriting: int) -> None:
        if fd not in (0, 1, 2):
            self._fd(fd)

    def fd_close(self, fd: int) -> None:
        if fd in (0, 1, 2):
            return  # the standard streams stay usable (and captured)
        node = self._fd(fd).node
        del self.fds[fd]
        self._release_if_unused(node)

    def _unlink(self, node: Node) -> None:
        """``node`` left the tree: its bytes go once no descriptor holds it."""
        if isinstance(node, File):
            node.linked = False
            self._release_if_unused(node)

    def _release_if_unused(self, node: Node) -> None:
        if not isinstance(node, File) or node.linked or node.body is None:
            return
        if not any(of is not None and of.node is node for of in self.fds.values()):
            node.body.release()

    def fd_renumber(self, fd: int, to: int) -> None:
        if fd <= 2 or to <= 2:
            raise WasiError(abi.ENOTSUP)  # the standard streams are fixed
        of = self._fd(fd)
        replaced = self._fd(to).node
        self.fds[to] = of
        del self.fds[fd]
        self._release_if_unused(replaced)

    def fd_datasync(self, fd: int) -> None:
        if fd > 2:
            self._fd(fd)

    fd_sync = fd_datasync

    def fd_advise(self, fd: int, _offset: int, _length: int, _advice: int) -> None:
        self._fd(fd)

    def fd_allocate(self, fd: int, offset: int, length: int) -> None:
        body = self._writable_file(fd)
        if offset + length > body.size:
            body.resize(offset + length)

    def _file(self, fd: int) -> tuple[OpenFile, File]:
        of = self._fd(fd)
        if isinstance(of.node, Dir):
            raise WasiError(abi.EISDIR)
        return of, of.node  # type: ignore[return-value]

    def _writable_file(self, fd: int) -> Content:
        _, f = self._file(fd)
        if f.body is None:
            raise WasiError(abi.EBADF)
        return f.body

    def _stat(self, node: Node) -> bytes:
        if isinstance(node, File):
            size = node.size()
        elif isinstance(node, Symlink):
            size = len(node.target.encode())
        else:
            size = 0
        return abi.filestat(node.ino, filetype(node), size, REALTIME_EPOCH_NS)

    def fd_filestat_get(self, fd: int, ptr: int) -> None:
        if fd in (0, 1, 2):
            self._write(ptr, abi.filestat(0, abi.FILETYPE_CHARACTER_DEVICE, 0, REALTIME_EPOCH_NS))
            return
        self._write(ptr, self._stat(self._fd(fd).node))

    def fd_filestat_set_size(self, fd: int, size: int) -> None:
        self._writable_file(fd).resize(size)

    def fd_filestat_set_times(self, fd: int, _atim: int, _mtim: int, _flags: int) -> None:
        self._fd(fd)  # timestamps are fixed: accepted and ignored

    def _iovecs(self, iovs: int, count: int) -> list[tuple[int, int]]:
        return abi.iovecs(self._read(iovs, 8 * count), count)

    def fd_read(self, fd: int, iovs: int, count: int, nread_ptr: int) -> None:
        if fd == 0:
            self._u32(nread_ptr, 0)
            return
        of, f = self._file(fd)
        n = self._pread(f, iovs, count, of.offset)
        of.offset += n
        self._u32(nread_ptr, n)

    def fd_pread(self, fd: int, iovs: int, count: int, offset: int, nread_ptr: int) -> None:
        _, f = self._file(fd)
        self._u32(nread_ptr, self._pread(f, iovs, count, offset))

    def _pread(self, f: File, iovs: int, count: int, offset: int) -> int:
        total = 0
        for ptr, length in self._iovecs(iovs, count):
            chunk = self.fs.read(f, offset + total, length)
            self._write(ptr, chunk)
            total += len(chunk)
            if len(chunk) < length:
                break
        return total

    def fd_write(self, fd: int, iovs: int, count: int, nwritten_ptr: int) -> None:
        chunks = b"".join(self._read(p, n) for p, n in self._iovecs(iovs, count))
        if fd in (1, 2):
            (self.stdout if fd == 1 else self.stderr).write(chunks)
        else:
            of = self._fd(fd)
            body = self._writable_file(fd)
            if of.append:
                of.offset = body.size
            body.write(of.offset, chunks)
            of.offset += len(chunks)
        self._u32(nwritten_ptr, len(chunks))

    def fd_pwrite(self, fd: int, iovs: int, count: int, offset: int, nwritten_ptr: int) -> None:
        chunks = b"".join(self._read(p, n) for p, n in self._iovecs(iovs, count))
        self._writable_file(fd).write(offset, chunks)
        self._u32(nwritten_ptr, len(chunks))

    def fd_seek(self, fd: int, offset: int, whence: int, new_ptr: int) -> None:
        if fd in (0, 1, 2):
            raise WasiError(abi.ESPIPE)
        of, f = self._file(fd)
        offset = offset - (1 << 64) if offset >= 1 << 63 else offset
        base = {abi.WHENCE_SET: 0, abi.WHENCE_CUR: of.offset, abi.WHENCE_END: f.size()}.get(whence)
        if base is None or base + offset < 0:
            raise WasiError(abi.EINVAL)
        of.offset = base + offset
        self._u64(new_ptr, of.offset)

    def fd_tell(self, fd: int, ptr: int) -> None:
        if fd in (0, 1, 2):
            raise WasiError(abi.ESPIPE)
        self._u64(ptr, self._fd(fd).offset)

    def fd_readdir(self, fd: int, buf: int, length: int, cookie: int, used_ptr: int) -> None:
        of = self._fd(fd)
        d = of.node
        if not isinstance(d, Dir):
            raise WasiError(abi.ENOTDIR)
        entries = self.fs.entries(d)
        names = [".", "..", *sorted(entries)]
        out = bytearray()
        for i in range(cookie, len(names)):
            name = names[i]
            node = d if name == "." else (d.parent or d) if name == ".." else entries[name]
            encoded = name.encode()
            out += abi.dirent(i + 1, node.ino, len(encoded), filetype(node)) + encoded
            if len(out) >= length:
                break
        self._write(buf, bytes(out[:length]))
        self._u32(used_ptr, min(len(out), length))

    # ---------------------------------------------------------------- paths

    def _resolve(
        self, fd: int, ptr: int, length: int, follow: bool
    ) -> tuple[Dir, str, Node | None]:
        return self.fs.resolve(self._dir_fd(fd), self._str(ptr, length), follow)

    def path_open(
        self,
        fd: int,
        dirflags: int,
        ptr: int,
        length: int,
        oflags: int,
        _rights: int,
        _inheriting: int,
        fdflags: int,
        fd_ptr: int,
    ) -> None:
        parent, name, node = self._resolve(
            fd, ptr, length, bool(dirflags & abi.LOOKUP_SYMLINK_FOLLOW)
        )
        if isinstance(node, Symlink):
            raise WasiError(abi.ELOOP)
        if node is None:
            if not oflags & abi.OFLAGS_CREAT:
                raise WasiError(abi.ENOENT)
            if oflags & abi.OFLAGS_DIRECTORY:
                raise WasiError(abi.ENOENT)
            if not parent.may_change(name):
                raise WasiError(abi.EROFS)
            node = self.fs.new_file()
            self.fs.entries(parent)[name] = node
        elif oflags & abi.OFLAGS_EXCL and oflags & abi.OFLAGS_CREAT:
            raise WasiError(abi.EEXIST)
        if oflags & abi.OFLAGS_DIRECTORY and not isinstance(node, Dir):
            raise WasiError(abi.ENOTDIR)
        if oflags & abi.OFLAGS_TRUNC:
            if not isinstance(node, File):
                raise WasiError(abi.EISDIR)
            if node.body is None:
                raise WasiError(abi.EROFS)
            node.body.resize(0)
        new_fd = max(self.fds) + 1
        self.fds[new_fd] = OpenFile(node, append=bool(fdflags & abi.FDFLAGS_APPEND))
        self._u32(fd_ptr, new_fd)

    def path_filestat_get(self, fd: int, flags: int, ptr: int, length: int, buf: int) -> None:
        _, _, node = self._resolve(fd, ptr, length, bool(flags & abi.LOOKUP_SYMLINK_FOLLOW))
        if node is None:
            raise WasiError(abi.ENOENT)
        self._write(buf, self._stat(node))

    def path_filestat_set_times(self, fd: int, flags: int, ptr: int, length: int, *_: int) -> None:
        _, _, node = self._resolve(fd, ptr, length, bool(flags & abi.LOOKUP_SYMLINK_FOLLOW))
        if node is None:
            raise WasiError(abi.ENOENT)

    def path_create_directory(self, fd: int, ptr: int, length: int) -> None:
        parent, name, node = self._resolve(fd, ptr, length, False)
        if node is not None:
            raise WasiError(abi.EEXIST)
        if not parent.may_change(name):
            raise WasiError(abi.EROFS)
        self.fs.entries(parent)[name] = Dir(
            self.fs.new_ino(), writable=True, parent=parent, entries={}
        )

    def path_readlink(
        self, fd: int, ptr: int, length: int, buf: int, buf_len: int, used: int
    ) -> None:
        _, _, node = self._resolve(fd, ptr, length, False)
        if not isinstance(node, Symlink):
            raise WasiError(abi.EINVAL if node is not None else abi.ENOENT)
        target = node.target.encode()[:buf_len]
        self._write(buf, target)
        self._u32(used, len(target))

    def _remove(self, fd: int, ptr: int, length: int, want_dir: bool) -> None:
        parent, name, node = self._resolve(fd, ptr, length, False)
        if node is None:
            raise WasiError(abi.ENOENT)
        if want_dir != isinstance(node, Dir):
            raise WasiError(abi.ENOTDIR if want_dir else abi.EISDIR)
        if want_dir and self.fs.entries(node):  # type: ignore[arg-type]
            raise WasiError(abi.ENOTEMPTY)
        if not parent.may_change(name):
            raise WasiError(abi.EROFS)
        del self.fs.entries(parent)[name]
        self._unlink(node)

    def path_remove_directory(self, fd: int, ptr: int, length: int) -> None:
        self._remove(fd, ptr, length, want_dir=True)

    def path_unlink_file(self, fd: int, ptr: int, length: int) -> None:
        self._remove(fd, ptr, length, want_dir=False)

    def path_rename(
        self, fd: int, old: int, old_len: int, new_fd: int, new: int, new_len: int
    ) -> None:
        src_parent, src_name, node = self._resolve(fd, old, old_len, False)
        dst_parent, dst_name, existing = self._resolve(new_fd, new, new_len, False)
        if node is None:
            raise WasiError(abi.ENOENT)
        if not (src_parent.may_change(src_name) and dst_parent.may_change(dst_name)):
            raise WasiError(abi.EROFS)
        if isinstance(existing, Dir) and self.fs.entries(existing):
            raise WasiError(abi.ENOTEMPTY)
        del self.fs.entries(src_parent)[src_name]
        self.fs.entries(dst_parent)[dst_name] = node
        if isinstance(node, Dir):
            node.parent = dst_parent
        if existing is not None and existing is not node:
            self._unlink(existing)

    def path_symlink(self, old: int, old_len: int, fd: int, new: int, new_len: int) -> None:
        target = self._str(old, old_len)
        parent, name, existing = self._resolve(fd, new, new_len, False)
        if existing is not None:
            raise WasiError(abi.EEXIST)
        if not parent.may_change(name):
            raise WasiError(abi.EROFS)
        self.fs.entries(parent)[name] = Symlink(self.fs.new_ino(), writable=True, target=target)

    def path_link(self, *_: int) -> int:
        return abi.ENOTSUP
