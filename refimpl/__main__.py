"""Command line of refimpl: ``python -m refimpl book|bench|vectors``.

``book``   execute every chapter listed in ``book.toml`` and write the offline HTML book
           (see :mod:`refimpl._book`).
``bench``  time each hot path against a plain NumPy/SciPy baseline and the machine's limit,
           quiet and under a competing load (see :mod:`refimpl._bench`).
``vectors`` export or verify the golden vectors (see :mod:`refimpl.oracle`).
"""

from __future__ import annotations

import sys

_COMMANDS = {
    "book": ("refimpl._book", "execute the chapters and write the offline HTML book"),
    "bench": ("refimpl._bench", "time hot paths against plain baselines and the machine's limit"),
    "vectors": ("refimpl.oracle", "export or verify the golden vectors (export|verify DIR)"),
}


def _usage() -> str:
    lines = ["usage: python -m refimpl <command> [options]", "", "commands:"]
    lines += [f"  {name:<8}{help_}" for name, (_, help_) in _COMMANDS.items()]
    lines += ["", "Run `python -m refimpl <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        print(f"refimpl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(_COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
