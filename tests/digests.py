"""Digests of what the shipped bundles make of the 24 Kodak images: files and pixels.

A restructuring must change no behaviour; this records, per machine kind, the SHA-256 of
every file the shipped bundles encode from the Kodak images and of the pixels each file
decodes to (realism 0, and 1 for bundles with a realism decoder), so that a test can
compare the code of today with the code that recorded them. Float networks round
differently on other CPUs (bf16 on AMX or AVX512-BF16, float32 on AVX2) and thread
counts, so each kind of machine has its own entry: ``python -m tests.digests --write``
records this machine's (on the code it should match), ``tests/test_digests.py`` checks.
The Kodak images are not in the repository: they are looked for beside it
(``../shared/data/kodak``) or in ``AEIC_KODAK``; without them the check is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "reference" / "kodak-digests.json"
REPO = Path(__file__).resolve().parent.parent
THREADS = 2


def kodak_folder() -> Path | None:
    """The 24 Kodak PNGs, if this machine has them."""
    folder = Path(os.environ.get("AEIC_KODAK", REPO.parent / "shared" / "data" / "kodak"))
    return folder if len(sorted(folder.glob("kodim*.png"))) == 24 else None


def machine_kind() -> str:
    """What decides the float networks' rounding: the CPU's bf16 path and the threads."""
    from aeic_codec.runtime import cpu

    isa = "amx" if cpu.has("amx_bf16") else "avx512bf16" if cpu.has("avx512_bf16") else "avx2"
    return f"{isa}-threads{THREADS}"


def compute(folder: Path, log: bool = False) -> dict[str, str]:
    """name -> SHA-256 for every file and decoded picture (names: bundle/image[/rN])."""
    import numpy as np
    import torch

    from aeic_codec.api import decode_image, encode_image, load_model
    from aeic_codec.runtime.imageio import read_image

    torch.set_num_threads(THREADS)
    out: dict[str, str] = {}
    for bundle in sorted((REPO / "weights").glob("*.safetensors")):
        model = load_model(bundle, realism=True)
        levels = [0.0, 1.0] if model.realism is not None else [0.0]
        for png in sorted(folder.glob("kodim*.png")):
            key = f"{bundle.stem}/{png.stem}"
            data = encode_image(read_image(png)[0], model).data
            out[key] = hashlib.sha256(data).hexdigest()
            for r in levels:
                pixels = decode_image(data, model, realism=r).image
                out[f"{key}/r{r:g}"] = hashlib.sha256(np.ascontiguousarray(pixels)).hexdigest()
            if log:
                print(key, out[key][:12], flush=True)
    return out


def recorded() -> dict[str, dict[str, str]]:
    return json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record this machine's entry")
    args = parser.parse_args()
    folder = kodak_folder()
    if folder is None:
        print("no Kodak images (../shared/data/kodak or AEIC_KODAK)", file=sys.stderr)
        return 1
    kind = machine_kind()
    found = compute(folder, log=True)
    if args.write:
        table = recorded()
        table[kind] = found
        FIXTURE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(found)} digests for {kind} in {FIXTURE}")
        return 0
    want = recorded().get(kind)
    if want is None:
        print(f"no digests recorded for {kind}", file=sys.stderr)
        return 1
    differ = sorted(k for k in want.keys() | found.keys() if want.get(k) != found.get(k))
    print(f"{len(found)} digests, {len(differ)} differ: {' '.join(differ[:10])}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
