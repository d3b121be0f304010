"""Stdlib-only probe, run by the *target* interpreter: `python -c <this file's source>`.

It describes the interpreter and every installed distribution by reading metadata files directly
(it never imports the packages it describes) and prints one JSON object. Keep it compatible with old
Pythons (3.6+): no walrus, no dataclasses, no importlib.metadata.
"""

import json
import os
import platform
import re
import sys

SCHEMA = 1
_NORMALIZE = re.compile(r"[-_.]+")


def normalize(name):
    # packaging.utils.canonicalize_name's rule (the doctor uses that): the target may not have packaging.
    return _NORMALIZE.sub("-", name).lower()


def read_headers(path):
    """Core-metadata headers (RFC 822 style) up to the first blank line; the body is skipped."""
    headers = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\r\n")
            if not line:
                break
            if line[0] in " \t" and headers:
                headers[-1][1] += "\n" + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise ValueError("malformed header line %r" % line[:80])
            headers.append([key.strip(), value.strip()])
    return headers


def egg_requires(path):
    """requires.txt of an egg-info → Requires-Dist strings with `extra ==` markers."""
    reqs, section = [], ""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            extra, _, marker = section.partition(":")
            conds = []
            if marker:
                conds.append("(%s)" % marker)
            if extra:
                conds.append('extra == "%s"' % extra)
            reqs.append(line + ("; " + " and ".join(conds) if conds else ""))
    return reqs


def read_file(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def describe_dist(site, entry, with_files):
    path = os.path.join(site, entry)
    dist = {"path": path, "location": site, "kind": "dist-info" if entry.endswith(".dist-info") else "egg-info",
            "problems": []}
    if os.path.isdir(path):
        meta = os.path.join(path, "METADATA" if dist["kind"] == "dist-info" else "PKG-INFO")
    else:  # a bare PKG-INFO style .egg-info file
        meta = path
    try:
        headers = read_headers(meta)
    except (OSError, ValueError) as exc:
        dist["problems"].append("cannot read %s: %s" % (os.path.basename(meta), exc))
        headers = []
    one, many = {}, {}
    for key, value in headers:
        k = key.lower()
        one.setdefault(k, value)
        many.setdefault(k, []).append(value)
    stem = entry.rsplit(".", 1)[0]
    dist["name"] = one.get("name")
    dist["version"] = one.get("version")
    if headers and not dist["name"]:
        dist["problems"].append("METADATA has no Name")
    if headers and not dist["version"]:
        dist["problems"].append("METADATA has no Version")
    # Name and version as spelled by the folder, for metadata that cannot be read.
    dir_name, _, dir_version = stem.partition("-")
    dist["dir_name"], dist["dir_version"] = dir_name, dir_version.split("-")[0] or None
    dist["requires"] = many.get("requires-dist", [])
    if dist["kind"] == "egg-info" and os.path.isdir(path) and not dist["requires"]:
        req_txt = os.path.join(path, "requires.txt")
        if os.path.exists(req_txt):
            dist["requires"] = egg_requires(req_txt)
    dist["requires_python"] = one.get("requires-python")
    dist["provides_extra"] = many.get("provides-extra", [])
    dist["installer"] = None
    dist["direct_url"] = None
    dist["files"] = None
    if dist["kind"] == "dist-info" and os.path.isdir(path):
        installer = read_file(os.path.join(path, "INSTALLER"))
        dist["installer"] = installer.strip() if installer else None
        direct = read_file(os.path.join(path, "direct_url.json"))
        if direct:
            try:
                dist["direct_url"] = json.loads(direct)
            except ValueError:
                dist["problems"].append("direct_url.json is not valid JSON")
        record = os.path.join(path, "RECORD")
        dist["has_record"] = os.path.exists(record)
        if with_files and dist["has_record"]:
            text = read_file(record) or ""
            dist["files"] = [ln.split(",", 1)[0] for ln in text.splitlines() if ln]
        if dist["has_record"] and (dist["name"] or "").lower() == "torch":
            missing = missing_files(site, record)
            if missing:
                dist["problems"].append("%s %d file(s) its RECORD lists: %s" % (
                    MISSING, len(missing), ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")))
    return dist


# Only torch's RECORD is verified on every probe: a damaged torch breaks everything above it, and its
# ~15,000 entries cost ~20 ms (listdir per folder); every distribution's would cost ~0.4 s more on a full stack.
MISSING = "damaged install: missing"


def missing_files(site, record):
    """RECORD's files (not .pyc) that are gone. One listdir per folder, not one lstat per file: torch's
    ~730 folders instead of ~14,600 files (measured 20 ms instead of 43 on every probe)."""
    wanted = {}
    for line in (read_file(record) or "").splitlines():
        rel = line.split(",", 1)[0]
        if rel and not rel.endswith(".pyc"):
            folder, _, name = rel.rpartition("/")
            wanted.setdefault(folder, []).append(name)
    out = []
    for folder, names in wanted.items():
        try:
            present = set(os.listdir(os.path.join(site, folder)))
        except OSError:
            present = set()
        out.extend(folder + "/" + n if folder else n for n in names if n not in present)
    return out


def scan(paths, with_files):
    dists, strays, seen = [], [], set()
    for site in paths:
        real = os.path.realpath(site) if site else site
        if not site or real in seen or not os.path.isdir(site):
            if site and site.endswith(".egg") and os.path.isfile(os.path.join(site, "EGG-INFO", "PKG-INFO")):
                d = describe_dist(site, "EGG-INFO", with_files)
                d["kind"] = "egg"
                dists.append(d)
            continue
        seen.add(real)
        try:
            entries = sorted(os.listdir(site))
        except OSError:
            continue
        for entry in entries:
            if entry.startswith("~") and len(entry) > 1:
                # pip renames a package to ~xxx while uninstalling (its dist-info too: ~orch-2.8.0.dist-info);
                # left behind after an interrupted run. A leftover, never an install.
                strays.append(os.path.join(site, entry))
            elif entry.endswith((".dist-info", ".egg-info")):
                dists.append(describe_dist(site, entry, with_files))
    return dists, strays


def pth_lines(paths):
    """Every line of every .pth file in the site folders: a path line adds a folder to sys.path, an
    `import` line runs code (and may insert a folder ahead of site-packages)."""
    out, seen = [], set()
    for site in paths:
        if not site or not os.path.isdir(site) or os.path.realpath(site) in seen:
            continue
        seen.add(os.path.realpath(site))
        try:
            names = sorted(n for n in os.listdir(site) if n.endswith(".pth"))
        except OSError:
            continue
        for name in names:
            text = read_file(os.path.join(site, name))
            if text is None:
                continue
            for n, line in enumerate(text.splitlines(), 1):
                stripped = line.strip()
                if not stripped or stripped.startswith("#"):
                    continue
                is_import = stripped.startswith(("import ", "import\t"))
                folder = None if is_import else os.path.normpath(os.path.join(site, stripped))
                out.append({"file": os.path.join(site, name), "line": n, "text": stripped,
                            "kind": "import" if is_import else "path", "folder": folder})
    return out


def marker_environment():
    """The values PEP 508 markers are evaluated against, for *this* interpreter."""
    impl = sys.implementation
    iver = "%d.%d.%d" % impl.version[:3]
    if impl.version.releaselevel != "final":
        iver += impl.version.releaselevel[0] + str(impl.version.serial)
    return {
        "implementation_name": impl.name,
        "implementation_version": iver,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def glibc():
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        return None


def main(argv):
    with_files = "--files" in argv
    # sys.path[0] is the current directory for `python -c`; it depends on where envdoctor ran.
    paths = [p for p in sys.path[1:]]
    dists, strays = scan(paths, with_files)
    import sysconfig
    externally_managed = os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED"))
    out = {
        "schema": SCHEMA,
        "executable": sys.executable,
        "version": list(sys.version_info[:3]) + [sys.version_info.releaselevel],
        "version_string": sys.version.split()[0],
        "implementation": sys.implementation.name,
        "bits": 64 if sys.maxsize > 2 ** 32 else 32,
        "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "prefix": sys.prefix,
        "base_prefix": getattr(sys, "base_prefix", sys.prefix),
        "in_venv": getattr(sys, "base_prefix", sys.prefix) != sys.prefix,
        "conda": os.path.isdir(os.path.join(sys.prefix, "conda-meta")),
        "externally_managed": externally_managed,
        "user_site_enabled": bool(getattr(__import__("site"), "ENABLE_USER_SITE", False)),
        "purelib": sysconfig.get_paths()["purelib"],
        "platlib": sysconfig.get_paths()["platlib"],
        "sys_path": paths,
        "glibc": glibc(),
        "markers": marker_environment(),
        "distributions": dists,
        "strays": strays,
        "pth": pth_lines(paths),
        # Folders the PYTHONPATH variable put on sys.path (ahead of site-packages).
        "pythonpath": [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p],
    }
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
