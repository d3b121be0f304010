"""Scripts the *target* interpreter runs, never imported by the doctor.

The doctor reads each file's source and runs it as `python -c <source>` with the interpreter it
diagnoses, under a timeout: probe.py (stdlib only: interpreter and distributions), smoke.py (deep-mode
smoke tests: torch, bitsandbytes, flash-attn, torchao), importcheck.py (loads compiled extensions for
real) and stackimport.py (imports one package of the training stack, reporting where an import failed). This is where `import torch` may appear; nowhere else in src/envdoctor.
"""
