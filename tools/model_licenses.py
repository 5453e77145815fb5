"""Write nst/data/models/LICENSES.md: the credits of what the shipped networks were trained on.

    python tools/model_licenses.py [--data ../shared/data]

The shipped networks (`nst models`) are trained on the 216 photographs of ``../shared/data/train``
and on the style paintings.  This copies the photographs' attribution table (file, source package, original
path, author, licence, notes) verbatim from ``train/LICENSES.md`` and adds the paintings' credits from
``nst/data/ATTRIBUTION.md`` (the bundled copies) and ``DATA.md`` (the paintings only there), so the
attribution travels with the networks in every install.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "nst" / "data" / "models" / "LICENSES.md"
DATA = ROOT.parent / "shared" / "data"

LICENCE_TEXTS = {
    "CC BY 2.0": "https://creativecommons.org/licenses/by/2.0/",
    "CC BY 3.0": "https://creativecommons.org/licenses/by/3.0/",
    "CC BY 4.0": "https://creativecommons.org/licenses/by/4.0/",
    "CC BY-SA 3.0": "https://creativecommons.org/licenses/by-sa/3.0/",
    "CC BY-SA 4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "CC0 1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "GPL-2, GPL-2+": "https://www.gnu.org/licenses/old-licenses/gpl-2.0.html",
    "LGPL-2.1+": "https://www.gnu.org/licenses/old-licenses/lgpl-2.1.html",
}

HEADER = """# Licences of what the shipped networks were trained on

Written by `python tools/model_licenses.py` from `../shared/data/train/LICENSES.md`, `nst/data/ATTRIBUTION.md`
and `../shared/data/DATA.md`; do not edit by hand.

The pretrained feed-forward networks in this folder (`nst models`; each file's `meta["provenance"]` names
its styles, training data, steps, wall time, commit and evaluator scores) were trained by `nst train` on
the photographs listed below (the offline stand-in for COCO) and on the style paintings listed below. A
network holds no copy of any image, but it is made from them, so every image is credited here as its
licence asks of work derived from it: author, source, licence, and the changes made (each photograph was
re-encoded as JPEG quality 92 with its longest side at 512 px, then cropped, scaled and flipped at random
during training). Whether trained weights are an adaptation of their training images in the sense of
these licences (and so what ShareAlike or the GPL would ask of them) is not settled; nothing here claims
either way.

"""


def _rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row of `text` (header and separator rows included)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|")]


def photo_table(licenses_md: str) -> tuple[str, list[str]]:
    """(the licence-mix line, the photographs' table lines verbatim) of train/LICENSES.md."""
    mix = next((line for line in licenses_md.splitlines() if line.startswith("Licence mix:")), "")
    lines, in_table = [], False
    for line in licenses_md.splitlines():
        if line.startswith("| # | file |"):
            in_table = True
        if in_table and not line.startswith("|"):
            break
        if in_table:
            lines.append(line)
    if len(lines) < 3:
        raise SystemExit("model_licenses: no photograph table found in train/LICENSES.md")
    return mix, lines


def style_credits(attribution_md: str, data_md: str) -> list[tuple[str, str, str]]:
    """(file, work, licence) of each style painting: nst/data/ATTRIBUTION.md's, then DATA.md's others."""
    section = data_md.split("## styles/", 1)[1].split("\n## ", 1)[0] if "## styles/" in data_md else ""
    styles = {}
    for cells in _rows(section)[2:]:
        name = re.sub(r"\s*\(\d+x\d+\)$", "", cells[0])
        styles[name] = (cells[1], cells[2])
    for cells in _rows(attribution_md)[2:]:
        if cells[0] in styles:
            styles[cells[0]] = (cells[1], cells[2])
    return [(f, w, lic) for f, (w, lic) in styles.items()]


def render(data: Path) -> str:
    train = (data / "train" / "LICENSES.md").read_text(encoding="utf-8")
    mix, table = photo_table(train)
    n = len(table) - 2
    styles = style_credits((ROOT / "nst" / "data" / "ATTRIBUTION.md").read_text(encoding="utf-8"),
                           (data / "DATA.md").read_text(encoding="utf-8"))
    out = [HEADER, "## Style paintings\n", "| file | work | licence |", "|---|---|---|"]
    out += [f"| {f} | {w} | {lic} |" for f, w, lic in styles]
    out += ["", "Faithful photographs of two-dimensional public-domain works carry no new copyright.", ""]
    out += [f"## Training photographs ({n}, `../shared/data/train`)\n",
            "Gathered from free Debian and PyPI packages; the table says where each came from and under which "
            "licence (notes give a second licence where the package's metadata disagree).", ""]
    if mix:
        out += [mix, ""]
    out += ["Licence texts: " + "; ".join(f"{k}: <{v}>" for k, v in LICENCE_TEXTS.items())
            + "; public domain and CC0 ask for nothing.", ""]
    out += table
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the shared reference data folder")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    text = render(args.data)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    print(f"{args.out}: {text.count(chr(10))} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
