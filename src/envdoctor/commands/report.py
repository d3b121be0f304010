"""`envdoctor report merge REPORT…`: JSON reports from many nodes, merged: which nodes differ in what."""

from __future__ import annotations

import json
import sys


def main(args) -> int:
    from envdoctor import fleet
    nodes = fleet.load(args.files)
    if args.json:
        print(json.dumps(fleet.to_json(nodes), indent=2))
        differ, _ = fleet.differences(nodes)
        return 1 if differ else 0
    return fleet.render(nodes, sys.stdout)
