"""Load compiled extensions for real, run by the *target* interpreter:
`python -c <this source> --envdoctor-smoke imports [--preload-torch]` with a JSON list of
{"path", "module"} on stdin. Prints one JSON line per target, as soon as it is done, so that a crash
points at the target that caused it."""

import ctypes
import importlib
import json
import os
import sys


def main(argv):
    targets = json.loads(sys.stdin.read())
    if "--preload-torch" in argv:
        try:
            import torch  # noqa: F401  extensions are loaded after torch, as in real use
        except Exception as exc:  # report it on every target rather than dying
            for t in targets:
                print(json.dumps({"path": t["path"], "ok": False, "error": "import torch failed: %s" % exc}))
            return
    for t in targets:
        try:
            if t.get("module"):
                importlib.import_module(t["module"])
            else:
                ctypes.CDLL(t["path"], mode=os.RTLD_NOW)
            out = {"path": t["path"], "ok": True, "error": None}
        except BaseException as exc:  # ImportError, OSError, SystemError: all are outcomes
            out = {"path": t["path"], "ok": False, "error": "%s: %s" % (type(exc).__name__, exc)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
