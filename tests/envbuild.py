"""Build PythonEnv facts in tests, the way the probe would report them."""

from __future__ import annotations

from envdoctor.facts.python_env import Distribution, PythonEnv

MARKERS = {
    "implementation_name": "cpython", "implementation_version": "3.11.7", "os_name": "posix",
    "platform_machine": "x86_64", "platform_release": "6.8.0", "platform_system": "Linux",
    "platform_version": "#1 SMP", "python_full_version": "3.11.7",
    "platform_python_implementation": "CPython", "python_version": "3.11", "sys_platform": "linux",
}
SITE = "/venv/lib/python3.11/site-packages"


def dist(name, version, requires=(), site=SITE, extras=(), **kw) -> Distribution:
    return Distribution(name=name, version=version, path=f"{site}/{name}-{version}.dist-info",
                        location=site, kind="dist-info", requires=list(requires),
                        provides_extra=list(extras), installer="pip", has_record=True,
                        dir_name=name, dir_version=version, **kw)


def pyenv(*dists, version=(3, 11, 7), **kw) -> PythonEnv:
    fields = dict(
        executable="/venv/bin/python", reason="test", version=list(version) + ["final"],
        version_string=".".join(map(str, version)), implementation="cpython", bits=64,
        free_threaded=False, prefix="/venv", base_prefix="/usr", in_venv=True, conda=False,
        externally_managed=False, user_site_enabled=False, purelib=SITE, platlib=SITE, sys_path=[SITE],
        glibc="glibc 2.39", markers=dict(MARKERS), distributions=list(dists), strays=[],
    )
    fields.update(kw)
    return PythonEnv(**fields)
