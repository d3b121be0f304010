"""Which of the modules named on the command line the *target* interpreter cannot find:
`python -c <this source> torch transformers …` prints a JSON list. Nothing is imported (find_spec
reads the import path; a dotted name imports its parent package only)."""

import importlib.util
import json
import sys

print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]))
