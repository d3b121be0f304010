"""A small, fast reader for 64-bit little-endian ELF shared objects (what pip wheels ship on x86-64 and
aarch64 Linux): sections, the dynamic section (NEEDED, RPATH, RUNPATH, SONAME) and dynamic symbols.

It maps the file and unpacks only what is asked for, so a 450 MB libtorch_cuda.so costs milliseconds.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

DT_NEEDED, DT_RPATH, DT_SONAME, DT_RUNPATH = 1, 15, 14, 29
SHT_DYNSYM, SHT_DYNAMIC, SHT_GNU_HASH = 11, 6, 0x6FFFFFF6
SHN_UNDEF = 0
STB_WEAK = 2


def gnu_hash(name: bytes) -> int:
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


class ElfError(Exception):
    """Not an ELF file we can read (wrong magic, 32-bit, big-endian, truncated)."""


@dataclass
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass
class DynamicInfo:
    needed: list[str] = field(default_factory=list)
    rpath: list[str] = field(default_factory=list)
    runpath: list[str] = field(default_factory=list)
    soname: str | None = None


class ElfFile:
    """Use as a context manager: `with ElfFile(path) as elf: elf.dynamic()`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._fh = open(self.path, "rb")
        try:
            size = os.fstat(self._fh.fileno()).st_size
            if size < 64:
                raise ElfError(f"{self.path}: too small to be ELF")
            self.data = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, ElfError):
            self._fh.close()
            raise
        try:
            self._parse_header()
        except (struct.error, ElfError):
            self.close()
            raise

    def __enter__(self) -> "ElfFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.data.close()
        finally:
            self._fh.close()

    def _parse_header(self) -> None:
        d = self.data
        if d[:4] != b"\x7fELF":
            raise ElfError(f"{self.path}: not an ELF file")
        if d[4] != 2 or d[5] != 1:
            raise ElfError(f"{self.path}: only 64-bit little-endian ELF is supported")
        self.machine = struct.unpack_from("<H", d, 18)[0]
        shoff, = struct.unpack_from("<Q", d, 40)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 58)
        if shoff == 0 or shoff + shnum * shentsize > len(d):
            raise ElfError(f"{self.path}: no or truncated section headers")
        raw = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize) for i in range(shnum)]
        names_off = raw[shstrndx][4] if shstrndx < shnum else 0
        self.sections = [Section(self._cstr(names_off + r[0]) if names_off else "", r[1], r[4], r[5], r[6], r[9])
                         for r in raw]
        self._by_name = {s.name: s for s in self.sections}

    def _cstr(self, off: int) -> str:
        end = self.data.find(b"\0", off)
        return self.data[off:end].decode("utf-8", "replace")

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    def section_bytes(self, sec: Section) -> bytes:
        return self.data[sec.offset:sec.offset + sec.size]

    def dynamic(self) -> DynamicInfo:
        info = DynamicInfo()
        dyn = next((s for s in self.sections if s.type == SHT_DYNAMIC), None)
        if dyn is None:
            return info
        strtab = self.sections[dyn.link]
        for i in range(dyn.size // 16):
            tag, val = struct.unpack_from("<qQ", self.data, dyn.offset + i * 16)
            if tag == 0:
                break
            if tag == DT_NEEDED:
                info.needed.append(self._cstr(strtab.offset + val))
            elif tag == DT_RPATH:
                info.rpath += [p for p in self._cstr(strtab.offset + val).split(":") if p]
            elif tag == DT_RUNPATH:
                info.runpath += [p for p in self._cstr(strtab.offset + val).split(":") if p]
            elif tag == DT_SONAME:
                info.soname = self._cstr(strtab.offset + val)
        return info

    def _dynsym(self) -> tuple[Section, Section] | None:
        sym = next((s for s in self.sections if s.type == SHT_DYNSYM), None)
        if sym is None or sym.entsize != 24:
            return None
        return sym, self.sections[sym.link]

    def exports(self, name: str) -> bool:
        """Does this library define `name` in its dynamic symbol table? A .gnu.hash lookup: a few
        microseconds, where reading all ~100k symbols of libtorch_cpu.so would take a fifth of a second."""
        if not hasattr(self, "_lookup"):
            self._lookup = self._gnu_hash_table()
        if self._lookup is None:  # no .gnu.hash: fall back to the whole table, once
            self._lookup = ("set", self.dynamic_symbols()[0])
        if self._lookup[0] == "set":
            return name in self._lookup[1]
        _kind, nbuckets, symoffset, bloom, shift, buckets_off, chain_off, sym, strtab = self._lookup
        raw = name.encode()
        h = gnu_hash(raw)
        word = bloom[(h // 64) % len(bloom)]
        mask = (1 << (h % 64)) | (1 << ((h >> shift) % 64))
        if word & mask != mask:
            return False
        d = self.data
        ix, = struct.unpack_from("<I", d, buckets_off + 4 * (h % nbuckets))
        if ix == 0:
            return False
        while True:
            ch, = struct.unpack_from("<I", d, chain_off + 4 * (ix - symoffset))
            if (ch | 1) == (h | 1):
                st_name, _info, _other, shndx = struct.unpack_from("<IBBH", d, sym.offset + 24 * ix)
                start = strtab.offset + st_name
                if d[start:start + len(raw) + 1] == raw + b"\0" and shndx != SHN_UNDEF:
                    return True
            if ch & 1:
                return False
            ix += 1

    def _gnu_hash_table(self):
        gh = next((s for s in self.sections if s.type == SHT_GNU_HASH), None)
        tables = self._dynsym()
        if gh is None or tables is None:
            return None
        nbuckets, symoffset, bloom_size, shift = struct.unpack_from("<IIII", self.data, gh.offset)
        bloom = struct.unpack_from(f"<{bloom_size}Q", self.data, gh.offset + 16)
        buckets_off = gh.offset + 16 + 8 * bloom_size
        chain_off = buckets_off + 4 * nbuckets
        return ("hash", nbuckets, symoffset, bloom, shift, buckets_off, chain_off, *tables)

    def names_with_prefix(self, prefix: str, limit: int = 5) -> list[str]:
        """Exported-or-not names in .dynstr starting with `prefix` (to show what changed)."""
        tables = self._dynsym()
        if tables is None:
            return []
        strtab = tables[1]
        blob = self.data[strtab.offset:strtab.offset + strtab.size]
        raw, out, pos = b"\0" + prefix.encode(), [], 0
        while len(out) < limit:
            pos = blob.find(raw, pos)
            if pos < 0:
                break
            end = blob.find(b"\0", pos + 1)
            out.append(blob[pos + 1:end].decode("utf-8", "replace"))
            pos = end
        return out

    def undefined_symbols(self, strong_only: bool = True) -> list[str]:
        """Names this object needs from others (weak references may stay unresolved)."""
        tables = self._dynsym()
        if tables is None:
            return []
        sym, strtab = tables
        table = self.data[strtab.offset:strtab.offset + strtab.size]
        out = []
        for name_off, info, _other, shndx, _v, _s in struct.iter_unpack(
                "<IBBHQQ", self.data[sym.offset:sym.offset + sym.size]):
            if name_off and shndx == SHN_UNDEF and not (strong_only and info >> 4 == STB_WEAK):
                out.append(table[name_off:table.find(b"\0", name_off)].decode("utf-8", "replace"))
        return out

    def dynamic_symbols(self) -> tuple[set[str], set[str]]:
        """(defined, undefined) names of the dynamic symbol table, unpacked in bulk."""
        sym = next((s for s in self.sections if s.type == SHT_DYNSYM), None)
        if sym is None or sym.entsize != 24:
            return set(), set()
        strtab = self.sections[sym.link]
        table = bytes(self.data[strtab.offset:strtab.offset + strtab.size])
        defined, undefined = set(), set()
        # Elf64_Sym: st_name u32, st_info u8, st_other u8, st_shndx u16, st_value u64, st_size u64
        for name_off, info, _other, shndx, _v, _s in struct.iter_unpack(
                "<IBBHQQ", self.data[sym.offset:sym.offset + sym.size]):
            if not name_off:
                continue
            end = table.find(b"\0", name_off)
            name = table[name_off:end].decode("utf-8", "replace")
            binding = info >> 4
            if shndx == SHN_UNDEF:
                undefined.add(name)
            elif binding in (1, 2, 10):  # GLOBAL, WEAK, GNU_UNIQUE
                defined.add(name)
        return defined, undefined
