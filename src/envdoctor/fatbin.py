"""GPU architectures compiled into a shared object, read from its embedded CUDA fat binaries.

The `.nv_fatbin` section holds containers (magic 0xBA55ED50, 16-byte header with the size of what
follows) of entries, each with its own header: kind (1 = PTX, 2 = ELF/SASS), header size, padded
payload size and, at byte 28, the SM version (90 = sm_90). Flag bit 0x100000 marks arch-specific
code (sm_90a), which runs on exactly that GPU. Payloads are skipped, never decompressed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from envdoctor.elf import ElfFile

MAGIC = 0xBA55ED50
MAGIC_BYTES = struct.pack("<I", MAGIC)
KIND_PTX, KIND_ELF = 1, 2
FLAG_ARCH_SPECIFIC = 0x100000


@dataclass
class Archs:
    sass: set[str] = field(default_factory=set)   # "sm_90", "sm_90a"
    ptx: set[str] = field(default_factory=set)    # "compute_90"
    # In how many fat-binary containers (about one per compiled source file) each arch appears.
    counts: dict[str, int] = field(default_factory=dict)
    containers: int = 0

    def to_dict(self) -> dict:
        return {"sass": sorted(self.sass, key=arch_key), "ptx": sorted(self.ptx, key=arch_key)}

    def build_archs(self) -> tuple[list[str], list[str], list[str]]:
        """(sass, ptx, extra): the archs the library was built for, and the ones only a few kernels have.

        A library's build archs (TORCH_CUDA_ARCH_LIST) are in nearly every container; hand-tuned kernels
        add others (sm_89 fp8 kernels, sm_90a/sm_100a variants) in a few. A GPU needs the former.
        """
        floor = max(1, self.containers // 2)
        main = {a for a, n in self.counts.items() if n >= floor}
        key = lambda names: sorted(names, key=arch_key)  # noqa: E731
        return (key(a for a in main if a.startswith("sm_")), key(a for a in main if a.startswith("compute_")),
                key(set(self.counts) - main))


def arch_key(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name.split("_", 1)[-1] if c.isdigit())
    return int(digits or 0), name


def archs_of(elf: ElfFile) -> Archs:
    out = Archs()
    sec = elf.section(".nv_fatbin")
    if sec is None:
        return out
    data, pos, end = elf.data, sec.offset, sec.offset + sec.size
    while pos + 16 <= end:
        magic, _version, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:
            nxt = data.find(MAGIC_BYTES, pos + 1, end)
            if nxt < 0:
                break
            pos = nxt
            continue
        entry, stop = pos + hsize, min(pos + hsize + fsize, end)
        seen = set()
        while entry + 64 <= stop:
            kind, _unk, esize, padded = struct.unpack_from("<HHIQ", data, entry)
            sm, = struct.unpack_from("<I", data, entry + 28)
            flags, = struct.unpack_from("<Q", data, entry + 40)
            if esize == 0:
                break
            suffix = "a" if flags & FLAG_ARCH_SPECIFIC else ""
            if kind == KIND_ELF:
                seen.add(f"sm_{sm}{suffix}")
            elif kind == KIND_PTX:
                seen.add(f"compute_{sm}{suffix}")
            entry += esize + padded
        out.containers += 1
        for arch in seen:
            out.counts[arch] = out.counts.get(arch, 0) + 1
            (out.sass if arch.startswith("sm_") else out.ptx).add(arch)
        pos = stop
    return out


def read_archs(path: str) -> Archs:
    with ElfFile(path) as elf:
        return archs_of(elf)
