"""Findings (and remedies) for a distribution seen more than once on sys.path, by how the copies
compete (envdoctor.shadowing)."""

from __future__ import annotations

from envdoctor import shadowing as sh
from envdoctor.facts.python_env import PythonEnv
from envdoctor.model import Item, Remedy, Status


def _lines(s: sh.Shadow) -> tuple[str, ...]:
    return tuple(f"{d.version or '?'} in {d.path}" + ("  (imported)" if d is s.active else "")
                 for d in [s.active, *s.others])


def shadow_item(python: PythonEnv, s: sh.Shadow) -> Item:
    from envdoctor.repair.requests import EditPth, pip_line, pip_remedy, remedy
    active = s.active
    name = active.name or active.key
    versions = {d.version for d in [active, *s.others]}
    if s.kind == sh.SYSTEM_SITE:
        return Item(Status.OK, f"{name} {active.version}: the venv's copy hides the system site's "
                               f"{', '.join(d.version or '?' for d in s.others)} (--system-site-packages)",
                    _lines(s))
    if s.kind == sh.PTH:
        line, own = s.pth, s.others[0]
        how = ("adds it" if line["kind"] == "path" else "inserts it ahead of site-packages")
        return Item(Status.FAIL if len(versions) > 1 else Status.WARN,
                    f"{name} {active.version} in {active.location} shadows {name} {own.version} in "
                    f"site-packages: {line['file']} line {line['line']} {how}",
                    _lines(s) + (f"{line['file']}:{line['line']}: {line['text']}",
                                 "Python imports the copy in that folder; pip installs and upgrades the one in "
                                 "site-packages, so an upgrade never takes effect (pip uninstall refuses the "
                                 "other copy: it is outside the environment)."),
                    remedy(EditPth(line["file"], int(line["line"]), line["text"]), python,
                           f"Remove that line from {line['file']} (a backup is kept); site-packages' "
                           f"{name} {own.version} is then imported."))
    if s.kind == sh.PYTHONPATH:
        own = s.others[0]
        return Item(Status.FAIL if len(versions) > 1 else Status.WARN,
                    f"{name} {active.version} in {active.location} (on PYTHONPATH) shadows {name} {own.version} "
                    "in site-packages", _lines(s),
                    Remedy(text=f"Remove {active.location} from PYTHONPATH (no automatic fix: envdoctor does not "
                                "edit your shell's start-up files)."))
    same_dir = s.kind == sh.SAME_DIR
    status = Status.FAIL if (same_dir or len(versions) > 1) else Status.WARN
    why = ("two metadata folders in one site-packages: an interrupted upgrade; the files may be a mix "
           "of both versions" if same_dir else "the first on sys.path is imported, the others shadow "
                                              "nothing but confuse pip")
    cmd = (pip_line(python.executable, [name], options=["-y"], verb="uninstall") + "  # repeat until none is "
           f"left, then: {pip_line(python.executable, [f'{name}=={active.version}'])}")
    return Item(status, f"{name} is installed {1 + len(s.others)} times", _lines(s) + (why,),
                pip_remedy(python, cmd, "Uninstall every copy, then install one."))
