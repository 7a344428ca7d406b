"""spmd-opt: read IR text, run named passes (verifying after each), print the result.

python -m spmd.opt --passes simplify,cse file.ir     (file '-' or none: stdin)
"""

from __future__ import annotations

import argparse
import sys

from spmd.errors import SpmdError


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    from spmd.ir.parser import parse_function
    from spmd.ir.printer import print_graph
    from spmd.passes import DEFAULT_PIPELINE, PASSES, optimize

    parser = argparse.ArgumentParser(prog="spmd-opt", description=__doc__)
    parser.add_argument("file", nargs="?", default="-", help="IR text file ('-': stdin)")
    parser.add_argument(
        "--passes",
        default=",".join(DEFAULT_PIPELINE),
        help=f"comma-separated, from: {', '.join(PASSES)}",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the verifier")
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.file == "-" else _read(args.file)
        name, graph = parse_function(text)
        pipeline = tuple(p.strip() for p in args.passes.split(",") if p.strip())
        if not args.no_verify:
            from spmd.ir.verifier import verify

            verify(graph, "input")
        graph = optimize(graph, pipeline, verify=not args.no_verify)
    except (SpmdError, OSError) as err:
        print(f"spmd-opt: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(print_graph(graph, name))
    return 0


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


if __name__ == "__main__":
    sys.exit(main())
