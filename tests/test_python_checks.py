from envbuild import pyenv

from envdoctor.checks import python as P
from envdoctor.model import Status


def test_interpreter():
    assert P.interpreter(pyenv()).status == Status.OK
    r = P.interpreter(pyenv(implementation="pypy"))
    assert r.status == Status.FAIL and "not CPython" in r.message and r.remedy.command
    assert P.interpreter(pyenv(bits=32)).status == Status.FAIL


def test_version():
    assert P.version(pyenv(version=(3, 11, 7))).status == Status.OK
    assert P.version(pyenv(version=(3, 9, 18))).status == Status.WARN
    assert P.version(pyenv(version=(3, 8, 18))).status == Status.FAIL
    assert P.version(pyenv(version=(3, 14, 0))).status == Status.WARN
    assert P.version(pyenv(version=(3, 13, 0), free_threaded=True)).status == Status.WARN


def test_environment():
    assert P.environment(pyenv()).status == Status.OK
    assert P.environment(pyenv(in_venv=False, conda=True)).status == Status.OK
    r = P.environment(pyenv(in_venv=False, externally_managed=True))
    assert r.status == Status.WARN and "PEP 668" in r.message and "venv" in r.remedy.command
    assert P.environment(pyenv(in_venv=False)).status == Status.WARN
