"""Fact providers by name. Kept apart from the check modules so the CLI can start the slow probes
before it imports the checks (the Python probe is a subprocess: it overlaps with those imports)."""

from envdoctor.facts.host import probe_host
from envdoctor.facts.python_env import probe_python
from envdoctor.registry import provider

provider("host", probe_host, owner="system.os", timeout=10.0)
provider("python", probe_python, owner="python.interpreter", timeout=None)
