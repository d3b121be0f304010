"""Which code runs on which GPU, and which PyTorch build to install for a GPU and driver.

Pure functions over facts and the tables in tables/cuda.json and tables/companions.json.
"""

from __future__ import annotations

from dataclasses import dataclass

from envdoctor import tables

CC = tuple  # (major, minor)


def parse_arch(name: str) -> tuple[int, int, str] | None:
    """"sm_90a" -> (9, 0, "a"); "compute_120" -> (12, 0, ""); "sm_86" -> (8, 6, "")."""
    try:
        body = name.split("_", 1)[1]
    except IndexError:
        return None
    suffix = body.lstrip("0123456789")
    digits = body[: len(body) - len(suffix)]
    if len(digits) < 2:
        return None
    return int(digits[:-1]), int(digits[-1]), suffix


def major_minor(version: str | None) -> tuple[int, int] | None:
    """"12.8" or "13.0.88" -> (12, 8); None when it is not such a version."""
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except (AttributeError, ValueError):
        return None


def sm_name(cc: CC) -> str:
    return f"sm_{cc[0]}{cc[1]}"


@dataclass(frozen=True)
class Coverage:
    sass: str | None    # the SASS that runs natively, e.g. "sm_86" for an sm_89 GPU
    ptx: str | None     # PTX the driver can JIT for this GPU

    @property
    def runnable(self) -> bool:
        return bool(self.sass or self.ptx)


def coverage(cc: CC, sass: list[str], ptx: list[str]) -> Coverage:
    """SASS runs on a GPU of the same major with minor >= the binary's; arch-specific SASS ("a") only
    on exactly its GPU; PTX is JIT-compiled for any GPU at or above its arch."""
    best_sass = None
    for name in sass:
        a = parse_arch(name)
        if a is None:
            continue
        major, minor, suffix = a
        fits = (major, minor) == tuple(cc) if suffix else (major == cc[0] and minor <= cc[1])
        if fits and (best_sass is None or parse_arch(best_sass)[:2] < (major, minor)):
            best_sass = name
    best_ptx = None
    for name in ptx:
        a = parse_arch(name)
        if a and not a[2] and a[:2] <= tuple(cc):
            if best_ptx is None or parse_arch(best_ptx)[:2] < a[:2]:
                best_ptx = name
    return Coverage(best_sass, best_ptx)


def tag_cuda(tag: str) -> tuple[int, int] | None:
    """"cu128" -> (12, 8)."""
    if not tag.startswith("cu") or not tag[2:].isdigit():
        return None
    digits = tag[2:]
    return int(digits[:-1]), int(digits[-1])


def min_driver(cuda: tuple[int, int], windows: bool = False) -> str | None:
    """The driver bundled with this CUDA (or the closest older CUDA in the table)."""
    table = tables.load("cuda")["driver_min"]
    known = sorted((tuple(int(x) for x in k.split(".")), v) for k, v in table.items())
    best = None
    for c, v in known:
        if c <= tuple(cuda) and c[0] == cuda[0]:
            best = v["windows" if windows else "linux"] or v["linux"]
    return best


@dataclass(frozen=True)
class Build:
    version: str   # "2.7.1"
    tag: str       # "cu128"

    @property
    def index_url(self) -> str:
        return f"https://download.pytorch.org/whl/{self.tag}"


def _minor_key(m: str) -> tuple[int, ...]:
    return tuple(int(x) for x in m.split("."))


def pick_build(gpus_cc: list[CC], driver_cuda: tuple[int, int] | None,
               current_minor: str | None) -> tuple[Build | None, bool]:
    """The PyTorch build to install: runs on every GPU and, if possible, on this driver.

    Prefers the installed torch minor (only the CUDA build changes), else the oldest newer minor that
    fits (the smallest upgrade). Returns (build, driver_ok); driver_ok False means the build needs a
    newer driver too.
    """
    t = tables.load("cuda")
    minors = sorted(t["torch_builds"], key=_minor_key)
    if current_minor in minors:
        minors = [current_minor] + [m for m in minors if _minor_key(m) > _minor_key(current_minor)]

    def fits_gpus(tag: str) -> bool:
        archs = t["tag_archs"].get(tag, [])
        return all(coverage(cc, archs, []).sass for cc in gpus_cc)

    def fits_driver(tag: str) -> bool:
        c = tag_cuda(tag)
        return driver_cuda is None or (c is not None and c <= tuple(driver_cuda))

    for need_driver in (True, False):
        for minor in minors:
            tags = sorted((tg for tg in t["torch_builds"][minor] if fits_gpus(tg) and
                           (fits_driver(tg) or not need_driver)), key=lambda tg: tag_cuda(tg) or (0, 0))
            if tags:
                # With a fitting driver take the newest CUDA it runs; without, the oldest that has the arch.
                tag = tags[-1] if need_driver else tags[0]
                return Build(t["latest_patch"][minor], tag), need_driver
    return None, False


def companion_pins(torch_minor: str, installed: list[str]) -> list[str]:
    """`torchvision==0.23.*`-style pins for the companions that are installed, for a torch minor."""
    row = tables.load("companions")["by_torch_minor"].get(torch_minor) or {}
    return [f"{name}=={row[name]}.*" for name in installed if row.get(name)]
