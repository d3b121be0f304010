"""One module per verb of the command line, each with `main(args) -> exit code`: check, checks, fix,
recipes, install, train, merge, eval (evaluate.py), report, wslconfig. cli.py only parses, dispatches and
maps errors to exit codes; interpreter.py resolves which interpreter a verb works on."""
