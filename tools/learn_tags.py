"""Learn tag -> driver facts from drivers' code, for the pooltag facts tagfind ships.

Scans the given drivers and writes one `TAG - driver.sys` line per tag that a driver's own
code allocates with (evidence call, wrapper or lookaside; frees and untagged calls prove no
ownership, and generic tags are shared by nature). tools/make_pooltag.py adds these lines to
data/pooltag.txt after Microsoft's facts.

    python tools/learn_tags.py --origin "pydivert 4.0.1 and 2.1.0 wheels (WinDivert)" DIR...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from tagfind.report import GENERIC_TAGS  # noqa: E402
from tagfind.scan import scan_file  # noqa: E402
from tagfind.tags import tag_to_str  # noqa: E402

OWNING_EVIDENCE = ("call", "wrapper", "lookaside")
HEADER = "// Learned by tagfind's scanner from the code of: {origin}.\n"


def learn(paths: list[Path]) -> list[str]:
    """`TAG - driver` lines, sorted, each once."""
    facts = set()
    for path in paths:
        result = scan_file(path)
        for site in result.sites:
            if site.tag is None or site.evidence not in OWNING_EVIDENCE:
                continue
            tag = tag_to_str(site.tag)
            if tag not in GENERIC_TAGS and "\\" not in tag:
                facts.add(f"{tag} - {path.name}")
    return sorted(facts)


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="driver files or folders")
    parser.add_argument("--origin", required=True, help="where the drivers came from")
    parser.add_argument("-o", "--output", default=str(repo / "data" / "learned.txt"))
    args = parser.parse_args(argv)
    files = sorted({f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.sys"))})
    lines = learn(files)
    Path(args.output).write_text(HEADER.format(origin=args.origin) + "".join(
        line + "\n" for line in lines), encoding="ascii", newline="\n")
    print(f"{args.output}: {len(lines)} facts from {len(files)} drivers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
