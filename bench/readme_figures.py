"""The README's figures of the shipped bundles (parameters, size), measured from weights/.

Usage: python -m bench.readme_figures [--write]

Prints the figures and says whether README.md states them; --write puts them in. They
come from the bundles' safetensors headers alone (no torch), so tests/test_bench.py
checks on every run that the README still says what the shipped files are.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import sys
from pathlib import Path

from aeic_codec.bundles.bundle import (
    DECODER_PARTS,
    INTEGER_PREFIX,
    REALISM_PREFIX,
    SHARED_PARTS,
    STEM_PREFIX,
    SUFFIX,
)
from aeic_codec.nn.int8 import SCALE_PREFIX

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WEIGHTS = ROOT / "weights"
# The figures in the Default models section; any spacing (line breaks) between the words.
SENTENCE = re.compile(
    r"(?P<params>\S+) M parameters,\s+(?P<decoder>\S+) M on the decoder side,\s+stored in"
    r"\s+int8;\s+with\s+the\s+integer\s+entropy\s+path\s+and\s+a\s+realism\s+decoder\s+"
    r"\((?P<realism>\S+) M parameters\),\s+(?P<size>\S+) MB per bundle"
)


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """Key -> shape, from a safetensors header (8-byte length, then JSON)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    return {key: entry["shape"] for key, entry in header.items()}


def bundle_figures(path: Path) -> dict[str, str]:
    """The model's parameters (its realism decoder, fast encoder, int8 scales and integer
    copies apart), those the decoder needs, the realism decoder's, and the file's size, as
    written."""
    params = decoder = realism = 0
    for key, shape in _tensor_shapes(path).items():
        n = math.prod(shape)
        if key.startswith(REALISM_PREFIX):
            realism += n
        elif not key.startswith((SCALE_PREFIX, INTEGER_PREFIX, STEM_PREFIX)):
            params += n
            decoder += n if key.startswith(DECODER_PARTS + SHARED_PARTS) else 0
    return {
        "params": f"{params / 1e6:.1f}",
        "decoder": f"{decoder / 1e6:.2f}",
        "realism": f"{realism / 1e6:.1f}",
        "size": f"{path.stat().st_size / 1e6:.1f}",  # as `aeic weights list` shows it
    }


def shipped_figures(folder: Path = WEIGHTS) -> dict[str, str]:
    """Each figure over the shipped bundles: one value, or a range where they differ."""
    each = [bundle_figures(p) for p in sorted(folder.glob(f"*{SUFFIX}"))]
    if not each:
        raise FileNotFoundError(f"no bundles in {folder}")
    out = {}
    for name in each[0]:
        values = sorted({f[name] for f in each}, key=float)
        out[name] = values[0] if len(values) == 1 else f"{values[0]}-{values[-1]}"
    return out


def with_figures(text: str, figures: dict[str, str]) -> str:
    """``text`` with the figures of its one SENTENCE replaced, the wording and breaks kept."""
    found = list(SENTENCE.finditer(text))
    if len(found) != 1:
        raise ValueError(f"README.md holds the bundle figures {len(found)} times, not once")
    match = found[0]
    pieces, last = [], match.start()
    for name in ("params", "decoder", "realism", "size"):
        pieces += [text[last : match.start(name)], figures[name]]
        last = match.end(name)
    return text[: match.start()] + "".join(pieces) + text[last:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="Put the figures in README.md.")
    args = parser.parse_args(argv)
    figures = shipped_figures()
    print(", ".join(f"{k} {v}" for k, v in figures.items()))
    text = README.read_text()
    updated = with_figures(text, figures)
    if updated == text:
        print("README.md states them")
    elif args.write:
        README.write_text(updated)
        print("README.md updated")
    else:
        print("README.md differs (run with --write)")
        sys.exit(1)


if __name__ == "__main__":
    main()
