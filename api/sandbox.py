"""The SQL worker's sandbox: a process that never writes, creates, truncates or removes a file, reads only
beneath the folders it is given (the table files, its own libraries), and whose address space is capped
(docs/design.md, Read-only SQL).

DuckDB's allowed_directories lets the serving connection read the atlas's table files, but it allows writes
there too (COPY TO, EXPLAIN ANALYZE COPY): DuckDB has no read-only file access. So the worker drops its own
right to write with Landlock (Linux 5.13+, unprivileged, inherited by nothing else: the worker has no
children): every write-like file access is handled and no rule grants one. Where Landlock is missing,
RLIMIT_FSIZE = 0 still stops every byte written (the statement check in sqlguard.py is the first guard).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
from pathlib import Path

_CREATE_RULESET, _RESTRICT_SELF = 444, 446  # the same on every Linux architecture
_PR_SET_NO_NEW_PRIVS = 38
_M_ARENA_MAX = -8

# Landlock file-system rights (linux/landlock.h): everything that writes, creates, removes or truncates.
_WRITE_FILE, _REMOVE_DIR, _REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
_MAKE = sum(1 << b for b in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_REFER, _TRUNCATE = 1 << 13, 1 << 14  # ABI 2, ABI 3
_NET_BIND, _NET_CONNECT = 1 << 0, 1 << 1  # ABI 4


class _Ruleset(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]


def deny_writes() -> str:
    """Take away this process's right to change any file; returns how ('landlock abi N' or 'rlimit')."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past RLIMIT_FSIZE then fails with EFBIG, not a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # 1: ask the version
    except (OSError, AttributeError):
        return "rlimit"
    if abi < 1:
        return "rlimit"
    fs = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    attr = _Ruleset(fs, _NET_BIND | _NET_CONNECT if abi >= 4 else 0)
    size = ctypes.sizeof(attr) if abi >= 4 else 8
    fd = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        return "rlimit"
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.syscall(_RESTRICT_SELF, fd, ctypes.c_uint32(0)) != 0:
        raise OSError(ctypes.get_errno(), "Landlock is there but refused to restrict the SQL worker")
    os.close(fd)
    return f"landlock abi {abi}"


_READ_FILE, _READ_DIR, _EXECUTE = 1 << 2, 1 << 3, 1 << 0
_ADD_RULE, _PATH_BENEATH = 445, 1


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def confine_reads(readable: list[Path]) -> bool:
    """Take away this process's right to open, list or run any file outside `readable` (folders, or single
    files; Landlock, a second layer over deny_writes). False where Landlock is missing. DuckDB lets a connection
    read its own database file whatever allowed_directories says (docs/design.md, Read-only SQL): this stops
    that in the kernel. Like deny_writes it holds for this thread and the threads it starts from now on, so call
    it before anything starts a thread (DuckDB starts its own at connect)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return False
    if abi < 1:
        return False
    handled = _READ_FILE | _READ_DIR | _EXECUTE
    fd = libc.syscall(_CREATE_RULESET, ctypes.byref(_Ruleset(handled, 0)), ctypes.c_size_t(8), ctypes.c_uint32(0))
    if fd < 0:
        return False
    try:
        for folder in readable:
            try:
                parent = os.open(folder, os.O_PATH)
            except OSError:
                continue  # not there (an atlas without table files yet): nothing to grant
            try:
                rights = _READ_FILE | _READ_DIR if os.path.isdir(folder) else _READ_FILE
                rule = _PathBeneath(rights, parent)
                if libc.syscall(_ADD_RULE, fd, ctypes.c_uint32(_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)):
                    raise OSError(ctypes.get_errno(), f"Landlock refused a read rule for {folder}")
            finally:
                os.close(parent)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.syscall(_RESTRICT_SELF, fd, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "Landlock is there but refused to confine the SQL worker's reads")
    finally:
        os.close(fd)
    return True


def cap_address_space(limit_bytes: int) -> None:
    """Cap this process's virtual memory: an allocation past it fails (DuckDB answers out of memory) instead of
    growing until the server's watcher sees it, which a single 2 GB string allocation outruns."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def limit_malloc_arenas() -> None:
    """glibc reserves 64 MB of address space per thread's malloc arena: two arenas keep that reservation from
    eating the address-space cap (call before DuckDB starts its threads)."""
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU time (user + system) a process has used so far (0 where /proc is not there)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def statm(pid: int | str = "self", field: int = 0, fd: int | None = None) -> int:
    """A process's virtual size (field 0) or resident size (field 1) in bytes (0 where /proc is not there);
    `fd`: read from /proc/<pid>/statm opened before (a confined process cannot open it)."""
    try:
        if fd is not None:
            text = os.pread(fd, 256, 0).decode()
        else:
            with open(f"/proc/{pid}/statm") as f:
                text = f.read()
        return int(text.split()[field]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
