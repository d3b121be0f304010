"""One verb per module: check, fix, recipes, install."""
