"""`python -m bnstudy.bench [study | plain | profile] ...` (see the package docstring)."""

import sys

COMMANDS = {"study": "bnstudy.bench.study", "plain": "bnstudy.bench.plain",
            "profile": "bnstudy.bench.profile"}

if __name__ == "__main__":
    import importlib

    args = sys.argv[1:]
    command = args[0] if args and args[0] in COMMANDS else None
    module = importlib.import_module(COMMANDS.get(command, "bnstudy.bench.epochs"))
    module.main(args[1:] if command else args)
