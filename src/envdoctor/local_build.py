"""The remedy for a compiled extension that does not fit the installed torch (a missing c10/torch symbol,
the other C++ ABI) and that no package index has: it was built here, from a folder or a VCS checkout.

Reinstalling `<name>==<version>` fails ("No matching distribution") or, where an index has it, brings back
the very build that was called broken. What pip recorded in `<dist-info>/direct_url.json` (PEP 610) says
where the source was: that source, rebuilt against this torch, is the fix."""

from __future__ import annotations

import shlex
from urllib.parse import unquote, urlsplit, urlunsplit

from envdoctor.facts.python_env import Distribution, PythonEnv
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.model import Remedy
from envdoctor.redact import redact_text

# --no-deps: nothing but the extension is touched, so torch stays the installed one (an unpinned resolve
# could replace it); --no-build-isolation: the build compiles against this torch's headers and libraries,
# not against the newest torch pip would put in a throwaway build environment.
REBUILD = "--force-reinstall --no-deps --no-build-isolation"


def _strip_userinfo(url: str) -> tuple[str, bool]:
    """The URL without `user:password@` (pip writes credentials it could not redact, e.g. `${TOKEN}`, and
    a hand-edited file may hold a real one), and whether there was any."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, False
    user, _, host = parts.netloc.rpartition("@")
    if parts.scheme.startswith("ssh") and user == "git":
        return url, False  # ssh's `git@host` is a user name, not a secret
    return urlunsplit(parts._replace(netloc=host)), True


def source_of(dist: Distribution | None) -> tuple[str, str, bool] | None:
    """(kind, pip target, credentials removed) from direct_url.json: kind "folder", "editable" or "vcs";
    None where it is absent, names an archive (a wheel or sdist URL) or cannot be read."""
    info = dist.direct_url if dist is not None else None
    if not isinstance(info, dict) or not isinstance(info.get("url"), str):
        return None
    url = info["url"]
    sub = info.get("subdirectory")
    if isinstance(info.get("dir_info"), dict) and url.startswith("file://"):
        folder = unquote(urlsplit(url).path)
        if isinstance(sub, str) and sub:
            folder = f"{folder.rstrip('/')}/{sub}"
        return ("editable" if info["dir_info"].get("editable") else "folder"), folder, False
    vcs = info.get("vcs_info")
    if isinstance(vcs, dict) and isinstance(vcs.get("vcs"), str):
        clean, had_secret = _strip_userinfo(url)
        target = f"{vcs['vcs']}+{clean}"
        if isinstance(vcs.get("commit_id"), str):
            target += f"@{vcs['commit_id']}"  # the recorded commit: the same source, built anew
        if isinstance(sub, str) and sub:
            target += f"#subdirectory={sub}"
        return "vcs", target, had_secret
    return None


def rebuild_remedy(python: PythonEnv, dist_name: str, version: str | None, torch: TorchFacts) -> Remedy:
    """Rebuild from the recorded source, or say that no automatic fix exists (no fix id either way: the
    build depends on a source envdoctor does not manage)."""
    from envdoctor.repair.requests import pip_remedy
    dist = python.get(dist_name)
    found = source_of(dist)
    label = f"{dist_name} {version or ''}".strip()
    if found is None:
        recorded = (dist.direct_url or {}).get("url") if dist is not None and isinstance(dist.direct_url, dict) else None
        where = (f"it was installed from an archive ({redact_text(recorded)}), a finished build" if recorded else
                 "pip recorded no source folder or VCS URL for it (no direct_url.json)")
        return Remedy(None, f"{label} must be rebuilt from its source against torch {torch.version}: {where}, so "
                            "reinstalling it would bring back the same binary, and no automatic fix exists. Rebuild "
                            f"it from its source with `{python.pip_command()} {REBUILD} <source folder or "
                            f"git+URL>`, or install a release of it built for torch {torch.version}.")
    kind, target, had_secret = found
    editable = "-e " if kind == "editable" else ""
    command = f"{python.pip_command()} {REBUILD} {editable}{shlex.quote(target)}"
    what = {"folder": f"the folder it was installed from ({target})",
            "editable": f"its editable checkout ({target})",
            "vcs": "the commit it was installed from"}[kind]
    text = (f"{label} was built here; rebuild it from {what} against torch {torch.version}, which stays as "
            "installed (--no-deps, --no-build-isolation). If its source does not compile against this torch, "
            "update the source first" + (" (or drop the @commit for the newest)." if kind == "vcs" else "."))
    if had_secret:
        text += (" The recorded URL carried credentials; they are not printed: git must supply them (credential "
                 "helper, ~/.netrc, ssh), or put them back into the URL.")
    if redact_text(command) != command:
        # A secret envdoctor cannot strip (a token in the query): the report masks it, so what would be
        # printed is not the command that works. Say so instead of offering a broken copy.
        return Remedy(None, f"{text} Its URL holds a secret, masked here, so the command is not copyable as "
                            f"printed: {redact_text(command)} (put the secret back where *** stands).")
    return pip_remedy(python, command, text)
