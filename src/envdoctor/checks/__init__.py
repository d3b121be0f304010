"""Checks judge facts: one module per area, each declaring its checks with `envdoctor.registry.check`.
envdoctor.registry names every module here (`check_modules`); importing one registers nothing."""
