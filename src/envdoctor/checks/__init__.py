"""Checks judge facts. Each module registers its checks; the providers are registered here."""

from envdoctor.facts.host import probe_host
from envdoctor.facts.python_env import probe_python
from envdoctor.registry import provider

provider("host", probe_host, owner="system.os", timeout=10.0)
provider("python", probe_python, owner="python.interpreter", timeout=None)

from envdoctor.checks import host, packages, python  # noqa: E402,F401  (registration)
