"""Import one package of the training stack for real, run by the *target* interpreter:
`python -c <this source> --envdoctor-smoke stack <module>`. Prints one JSON line: whether the import
worked, the exact error, and where it was raised (the module and line of the last frame), so that a
failure names the package whose code broke and, for "cannot import name X from Y", the package Y.

No GPU is needed: these are the imports a training script does before it touches a device."""

import json
import os
import sys
import time
import traceback


def module_of(filename):
    """The dotted module name of a source file, from the sys.path entry that holds it."""
    real = os.path.realpath(filename)
    best = None
    for entry in sys.path:
        if not entry:
            continue
        root = os.path.realpath(entry) + os.sep
        if real.startswith(root) and (best is None or len(root) > len(best)):
            best = root
    if best is None:
        return None
    rel = real[len(best):]
    rel = rel[:-3] if rel.endswith(".py") else rel
    parts = rel.split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or None


def main(argv):
    module = argv[-1]
    start = time.monotonic()
    out = {"module": module, "ok": True, "error": None, "raised_in": None, "line": None, "missing": None}
    try:
        __import__(module)
    except BaseException as exc:  # ImportError, RuntimeError, AttributeError, SystemExit: all are outcomes
        frames = traceback.extract_tb(exc.__traceback__)
        # The last frame in a real file (not importlib's frozen bootstrap) is the code that raised.
        real = [f for f in frames if f.filename and not f.filename.startswith("<")]
        last = real[-1] if real else None
        out.update(ok=False, error="%s: %s" % (type(exc).__name__, exc),
                   raised_in=module_of(last.filename) if last else None, line=last.lineno if last else None,
                   file=last.filename if last else None)
        # "cannot import name X from Y" and "No module named Y" both name Y here.
        name = getattr(exc, "name", None)
        out["missing"] = name if isinstance(name, str) else None
    out["seconds"] = round(time.monotonic() - start, 2)
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    # Some packages start threads at import; do not let them hold the process open.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
