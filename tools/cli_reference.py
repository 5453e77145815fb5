"""Write docs/cli.md, the `nst` command reference, from the argparse parsers themselves.

    python tools/cli_reference.py            # rewrite docs/cli.md
    python tools/cli_reference.py --check    # exit 1 if docs/cli.md is not what the parsers say

It walks `nst.cli.build_parser()` (which includes the subcommands plugged in through the `nst.commands`
entry points, e.g. `nst grid`, `nst server`, `nst reproduce` from flows/), so every option, choice, default
and help text is the one `--help` prints. tests/test_docs.py fails when docs/cli.md is stale.
The output does not depend on the terminal width or the Python version's help layout: it is built from
the parsers' actions, not from `format_help()`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "docs" / "cli.md"

HEADER = """# `nst` command reference

Generated from the argparse parsers by `python tools/cli_reference.py`; do not edit by hand
(`tests/test_docs.py` fails when this page and the parsers disagree). `nst COMMAND --help` prints the same
options. Usage mistakes are one line naming the flag and exit 2; bad input files are one line naming the
file and exit 2; failures of the machine or a service (disk full, a server gone) exit 1; Ctrl-C exits 130.

"""


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if isinstance(action.metavar, tuple):  # one name per value: nargs=2 with ("MODEL", "OUT")
        return " ".join(f"`{m}`" for m in action.metavar)
    if action.choices is not None:
        one = "\\|".join(str(c) for c in action.choices)
    elif action.metavar is not None:
        one = action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    else:
        one = action.dest.upper()
    one = f"`{one}`"
    if action.nargs == "+":
        return f"{one} ..."
    if action.nargs == "*":
        return f"[{one} ...]"
    if action.nargs == "?":
        return f"[{one}]"
    if isinstance(action.nargs, int) and action.nargs > 1:
        return " ".join([one] * action.nargs)
    return one


def _default(action: argparse.Action) -> str:
    d = action.default
    if action.required or d is None or d is False or d is argparse.SUPPRESS or action.nargs == 0:
        return ""
    if isinstance(d, (list, tuple)):
        if not d:  # an empty default (nargs="+" with default ()): nothing, not ``
            return ""
        d = " ".join(str(x) for x in d)
    return f"`{d}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    # the plain formatter: %(default)s and %% expanded, without ArgumentDefaultsHelpFormatter's "(default: ...)"
    # suffix, since the default has its own column
    return _cell(argparse.HelpFormatter(parser.prog)._expand_help(action))


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if not actions:
            continue
        title = group.title
        if title not in ("options", "optional arguments", "positional arguments"):
            rows.append(f"| **{_cell(title)}** | | | |")
        for a in actions:
            name = " / ".join(f"`{s}`" for s in a.option_strings) if a.option_strings else f"`{a.metavar or a.dest}`"
            flags = []
            if a.required:
                flags.append("required")
            if not a.option_strings and a.nargs == "?":
                flags.append("optional")
            if isinstance(a, argparse._AppendAction):
                flags.append("repeatable")
            text = _help(parser, a)
            if flags:
                text = f"({', '.join(flags)}) {text}".rstrip()
            rows.append(f"| {name} | {_value(a)} | {_default(a)} | {text} |")
    return rows


def _exclusive(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for g in parser._mutually_exclusive_groups:
        names = ", ".join(f"`{a.option_strings[0]}`" for a in g._group_actions if a.option_strings)
        lines.append(f"{'Exactly one' if g.required else 'At most one'} of {names}.")
    return lines


def _section(path: list[str], help_text: str, parser: argparse.ArgumentParser, out: list[str]) -> None:
    subs = _subparsers(parser)
    level = "#" * min(len(path), 4)
    out.append(f"{level} `{' '.join(path)}`\n")
    if help_text:
        sentence = _cell(help_text)
        sentence = sentence[:1].upper() + sentence[1:]
        out.append(sentence + ("\n" if sentence.endswith(".") else ".\n"))
    if parser.description and parser.description.strip() != help_text.strip():
        out.append(f"{_cell(parser.description)}\n")
    rows = _option_rows(parser)
    if rows:
        out.append("| option | value | default | description |")
        out.append("|---|---|---|---|")
        out.extend(rows)
        out.append("")
    ex = _exclusive(parser)
    if ex:
        out.append(" ".join(ex) + "\n")
    if subs:
        out.append("Subcommands: " + ", ".join(f"`{' '.join(path + [n])}`" for n, _, _ in subs) + ".\n")
    for name, h, sub in subs:
        _section(path + [name], h, sub, out)


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from nst.cli import build_parser

    parser = build_parser()
    out: list[str] = [HEADER.rstrip("\n") + "\n"]
    subs = _subparsers(parser)
    out.append("| command | what it does |")
    out.append("|---|---|")
    for name, h, _ in subs:
        out.append(f"| [`nst {name}`](#nst-{name}) | {_cell(h)} |")
    out.append("")
    for name, h, sub in subs:
        _section(["nst", name], h, sub, out)
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file differs from the parsers")
    ap.add_argument("--out", type=Path, default=TARGET, help="where to write (default docs/cli.md)")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python tools/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
