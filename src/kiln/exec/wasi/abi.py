"""WASI preview 1 constants and the byte layouts of its structures."""

from __future__ import annotations

import struct

# errno
SUCCESS = 0
E2BIG = 1
EACCES = 2
EBADF = 8
EEXIST = 20
EFAULT = 21
EINVAL = 28
EIO = 29
EISDIR = 31
ELOOP = 32
EMFILE = 33
ENAMETOOLONG = 37
ENOENT = 44
ENOEXEC = 45
ENOSYS = 52
ENOTDIR = 54
ENOTEMPTY = 55
ENOTSUP = 58
EPERM = 63
EROFS = 69
ESPIPE = 70
ENOTCAPABLE = 76

# filetype
FILETYPE_UNKNOWN = 0
FILETYPE_CHARACTER_DEVICE = 2
FILETYPE_DIRECTORY = 3
FILETYPE_REGULAR_FILE = 4
FILETYPE_SYMBOLIC_LINK = 7

# whence
WHENCE_SET = 0
WHENCE_CUR = 1
WHENCE_END = 2

# oflags
OFLAGS_CREAT = 1
OFLAGS_DIRECTORY = 2
OFLAGS_EXCL = 4
OFLAGS_TRUNC = 8

# fdflags
FDFLAGS_APPEND = 1

# lookupflags
LOOKUP_SYMLINK_FOLLOW = 1

# rights: everything (the virtual file system enforces access itself)
RIGHTS_ALL = (1 << 30) - 1

# clocks
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
CLOCK_PROCESS_CPUTIME = 2
CLOCK_THREAD_CPUTIME = 3

# poll_oneoff
EVENTTYPE_CLOCK = 0
EVENTTYPE_FD_READ = 1
EVENTTYPE_FD_WRITE = 2

PREOPENTYPE_DIR = 0

_FDSTAT = struct.Struct("<BxHxxxxQQ")  # filetype, flags, rights_base, rights_inheriting
_FILESTAT = struct.Struct("<QQBxxxxxxxQQQQQ")  # dev ino type nlink size atim mtim ctim
_PRESTAT = struct.Struct("<BxxxI")  # tag, name length
_DIRENT = struct.Struct("<QQIBxxx")  # next cookie, ino, name length, type
_IOVEC = struct.Struct("<II")
_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")  # userdata, tag, clock id, timeout, precision, flags
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, error, type, nbytes, flags

FDSTAT_SIZE = _FDSTAT.size
FILESTAT_SIZE = _FILESTAT.size
DIRENT_SIZE = _DIRENT.size
SUBSCRIPTION_SIZE = 48
EVENT_SIZE = 32


def fdstat(filetype: int, flags: int) -> bytes:
    return _FDSTAT.pack(filetype, flags, RIGHTS_ALL, RIGHTS_ALL)


def filestat(ino: int, filetype: int, size: int, time_ns: int) -> bytes:
    return _FILESTAT.pack(0, ino, filetype, 1, size, time_ns, time_ns, time_ns)


def prestat_dir(name_len: int) -> bytes:
    return _PRESTAT.pack(PREOPENTYPE_DIR, name_len)


def dirent(next_cookie: int, ino: int, name_len: int, filetype: int) -> bytes:
    return _DIRENT.pack(next_cookie, ino, name_len, filetype)


def iovecs(data: bytes, count: int) -> list[tuple[int, int]]:
    return [_IOVEC.unpack_from(data, 8 * i) for i in range(count)]


def subscription(data: bytes, offset: int) -> tuple[int, int, int, int, int]:
    """(userdata, tag, clock id, timeout, flags) of a subscription record."""
    userdata, tag, clock_id, timeout, _precision, flags = _SUBSCRIPTION.unpack_from(data, offset)
    return userdata, tag, clock_id, timeout, flags


def event(userdata: int, error: int, eventtype: int) -> bytes:
    return _EVENT.pack(userdata, error, eventtype, 0, 0)
