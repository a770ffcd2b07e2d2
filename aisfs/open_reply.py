"""FOPEN_NOFLUSH for read-only opens (part of the FUSE adapter, with ``fs.py`` and ``mount.py``).

Linux sends a FLUSH request at every close(2) of a FUSE file unless its open was answered with
``FOPEN_NOFLUSH``, and close waits for the answer. A file opened only for reading has nothing to
flush, yet for small files read whole (``cp -r``, a loader reading samples) that round trip is
one of the three each file costs. pyfuse3 (3.5.0) cannot set the flag: its ``FileInfo`` copies
``fh``, ``direct_io``, ``keep_cache`` and ``nonseekable`` into libfuse's ``fuse_file_info``, then
calls libfuse's ``fuse_reply_open``.

:func:`install` points pyfuse3's own reference to ``fuse_reply_open`` (its GOT entry: the slot
the dynamic linker fills with the function's address) at a function here. For the open that
:func:`without_flush` announced, that function answers with libfuse's ``fuse_reply_buf`` and a
``fuse_open_out`` carrying ``FOPEN_NOFLUSH`` (the kernel's ABI: ``fh``, ``open_flags``,
padding; what ``fuse_reply_open`` itself sends); every other open goes to ``fuse_reply_open``
unchanged. Where the slot cannot be found or written (another ELF layout or architecture, a
read-only GOT), nothing is changed and every close sends its FLUSH, as without this module. The
change is for the whole process and stays until it exits; installing again changes nothing.

Concurrency: trio thread only. pyfuse3 calls ``fuse_reply_open`` on the trio thread right after
the open handler returned, with no other task in between; the reply checks all the same that the
handle is the one announced (``fh`` is 16 bytes into libfuse 3's ``fuse_file_info``, after the
flags and the bit fields; were it elsewhere, no handle would match: every open would be answered
as usual).
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct

import pyfuse3

log = logging.getLogger(__name__)

FOPEN_KEEP_CACHE = 1 << 1
FOPEN_NOFLUSH = 1 << 5
_OPEN_OUT = struct.Struct("<QII")  # struct fuse_open_out: fh, open_flags, padding
_FH_OFFSET = 16  # of ``fh`` in ``struct fuse_file_info``
_GOT_RELOCATIONS = {
    "x86_64": (6, 7),  # R_X86_64_GLOB_DAT, R_X86_64_JUMP_SLOT
    "aarch64": (1025, 1026),  # R_AARCH64_GLOB_DAT, R_AARCH64_JUMP_SLOT
}
_REPLY_OPEN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


class _Hook:
    """The replacement of ``fuse_reply_open``. Invariant: ``announced`` is the (fh, reply) of
    the open being answered now, or None."""

    def __init__(self, libfuse: ctypes.CDLL) -> None:
        self.real = _REPLY_OPEN(("fuse_reply_open", libfuse))
        # Called without the interpreter lock (a CDLL function), unlike pyfuse3's own replies:
        # the write to the FUSE device wakes the reader, which may take this CPU at once, and
        # the helper threads need not wait for the lock meanwhile.
        self.reply_buf = libfuse.fuse_reply_buf
        self.reply_buf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        self.reply_buf.restype = ctypes.c_int
        self.announced: tuple[int, bytes] | None = None
        self.function = _REPLY_OPEN(self._reply_open)  # (kept: the slot points into it)

    def _reply_open(self, req: int, fi: int) -> int:
        announced, self.announced = self.announced, None
        try:
            if announced is not None and ctypes.c_uint64.from_address(
                    fi + _FH_OFFSET).value == announced[0]:
                return int(self.reply_buf(req, announced[1], _OPEN_OUT.size))
        except Exception:  # (an exception would leave ctypes to return 0 with no reply sent)
            log.exception("answering an open with FOPEN_NOFLUSH failed; answering it as usual")
        return int(self.real(req, fi))


_hook: _Hook | None = None


def install() -> bool:
    """Answer the opens announced with :func:`without_flush` with ``FOPEN_NOFLUSH`` from now
    on; False (and a DEBUG line) where pyfuse3's calls cannot be redirected."""
    global _hook
    if _hook is not None:
        return True
    try:
        libfuse = ctypes.CDLL("libfuse3.so.3")  # (the one pyfuse3 is linked with: loaded)
        hook = _Hook(libfuse)
        real = ctypes.cast(hook.real, ctypes.c_void_p).value
        slot = _got_slot(os.path.realpath(pyfuse3.__file__), b"fuse_reply_open", real)
    except (OSError, ValueError, AttributeError, struct.error) as exc:
        slot, reason = None, str(exc)
    else:
        reason = "no writable GOT entry for fuse_reply_open in pyfuse3"
    if slot is None:
        log.debug("read-only opens keep their FLUSH at close: %s", reason)
        return False
    ctypes.c_void_p.from_address(slot).value = ctypes.cast(hook.function, ctypes.c_void_p).value
    _hook = hook
    return True


def without_flush(fh: int, keep_cache: bool) -> None:
    """The open being answered now (handle ``fh``, read-only, its cached pages kept or not)
    needs no FLUSH at its close."""
    if _hook is not None:
        flags = FOPEN_NOFLUSH | (FOPEN_KEEP_CACHE if keep_cache else 0)
        _hook.announced = (fh, _OPEN_OUT.pack(fh, flags, 0))


def _got_slot(path: str, symbol: bytes, target: int | None) -> int | None:
    """The address of the GOT entry through which the loaded shared object ``path`` calls
    ``symbol``: when it is writable and holds ``target`` or an address inside ``path`` (its
    PLT, before the first call resolved it); else None."""
    kinds = _GOT_RELOCATIONS.get(os.uname().machine)
    if kinds is None:
        return None
    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:  # 64-bit little-endian only
        return None
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize)
                for i in range(shnum)]
    offset = None
    for _, kind, _, _, start, size, link, _, _, _ in sections:
        if kind != 4:  # SHT_RELA
            continue
        symbols, names = sections[link][4], sections[sections[link][6]][4]
        for at in range(start, start + size, 24):
            r_offset, r_info = struct.unpack_from("<QQ", elf, at)
            if r_info & 0xFFFFFFFF in kinds:
                name = names + struct.unpack_from("<I", elf, symbols + (r_info >> 32) * 24)[0]
                if elf[name:elf.index(b"\0", name)] == symbol:
                    offset = r_offset
    if offset is None:
        return None
    slot = _load_bias(path) + int(offset)
    spans = _mappings(path)
    if not any(low <= slot < high and writable for low, high, writable in spans):
        return None
    held = ctypes.c_void_p.from_address(slot).value or 0
    if held != target and not any(low <= held < high for low, high, _ in spans):
        return None  # someone else's replacement: leave it alone
    return slot


class _LinkMap(ctypes.Structure):
    _fields_ = [("l_addr", ctypes.c_size_t)]  # (the first field of glibc's struct link_map)


def _load_bias(path: str) -> int:
    """Where the dynamic linker put the (already loaded) shared object ``path``."""
    handle = ctypes.CDLL(path)._handle
    link_map = ctypes.POINTER(_LinkMap)()
    if ctypes.CDLL(None).dlinfo(ctypes.c_void_p(handle), 2,  # RTLD_DI_LINKMAP
                                ctypes.byref(link_map)) != 0:
        raise OSError("dlinfo failed")
    return int(link_map.contents.l_addr)


def _mappings(path: str) -> list[tuple[int, int, bool]]:
    """The address ranges the file ``path`` is mapped at in this process, writable or not."""
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == path:
                low, high = (int(x, 16) for x in fields[0].split("-"))
                spans.append((low, high, fields[1][1] == "w"))
    return spans
