"""`python -m bnstudy.bench [study | plain | profile] ...` (see the package docstring)."""

import importlib
import signal
import sys

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still removes its folders
    args = sys.argv[1:]
    command = args.pop(0) if args and args[0] in ("study", "plain", "profile") else "epochs"
    importlib.import_module(f"bnstudy.bench.{command}").main(args)
