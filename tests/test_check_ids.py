"""Every check id named anywhere — the train preflight, fix targets, provider owners, the skip and remedy
texts in the source, README, CONTRIBUTING and docs/ — is a check in the registry. Renaming a check without
updating one of these fails here, not on a user's machine."""

from __future__ import annotations

import re
from pathlib import Path

from envdoctor import registry
from envdoctor.commands.train import PREFLIGHT
from envdoctor.repair.plan import FIXES

ROOT = Path(__file__).resolve().parent.parent
CHECKS = registry.load()
PREFIXES = sorted({cid.split(".")[0] for cid in CHECKS})
# prefix.name, not part of a longer word, a file name (config.json, gpu.py) or a glob (system.d*).
ID = re.compile(r"(?<![\w./-])((?:" + "|".join(PREFIXES) + r")\.[a-z][a-z0-9_]*)(?![\w*-]|\.\w)")
FILE_SUFFIXES = {"py", "json", "yaml", "yml", "md", "txt", "toml", "sh", "exe", "safetensors", "bin", "log", "conf"}


def named_in(text: str) -> set[str]:
    return {m for m in ID.findall(text) if m.rsplit(".", 1)[1] not in FILE_SUFFIXES}


def test_every_check_id_named_anywhere_is_registered():
    named: dict[str, set[str]] = {
        "commands/train.py PREFLIGHT": set(PREFLIGHT),
        "repair/plan.py fix targets": {t for f in FIXES.values() for t in f.targets},
        "registry.PROVIDERS owners": {p.owner for p in registry.PROVIDERS.values()},
    }
    docs = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in docs:
        if path.exists():
            named[str(path.relative_to(ROOT))] = named_in(path.read_text(encoding="utf-8"))
    for path in sorted((ROOT / "src" / "envdoctor").rglob("*.py")):
        # the ids messages point users at: "(see gpu.driver)", "see packages.companions"
        refs = re.findall(r"see ([a-z_]+\.[a-z0-9_]+)", path.read_text(encoding="utf-8"))
        named[str(path.relative_to(ROOT))] = {r for r in refs if r.split(".")[0] in PREFIXES}
    unknown = {where: sorted(ids - set(CHECKS)) for where, ids in named.items() if ids - set(CHECKS)}
    assert not unknown, f"check ids that are not in the registry: {unknown}"
    # the scan finds ids at all (a broken pattern would pass vacuously)
    assert "gpu.driver" in named["docs/checks.md"] and named["registry.PROVIDERS owners"]


def test_every_registered_check_has_a_unique_id_and_a_known_category():
    assert all(c.category in registry.CATEGORIES for c in CHECKS.values())
    assert all(cid == c.id for cid, c in CHECKS.items())
