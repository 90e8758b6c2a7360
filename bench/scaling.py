"""Seconds per megapixel and peak memory of encode and decode, by picture size.

kodim23 (docs/kodim23.png) upscaled with Lanczos to each size is encoded with a shipped
bundle, then decoded at each realism setting (and, with ``--texture``, encoded with texture
statistics and decoded at realism 1 with the shipped texture file), every run in a fresh
process: the seconds are those of ``api.encode`` / ``api.decode_image`` in that process
(the model loaded, start-up excluded; below a megapixel the median of five), the peak is
the process's resident high-water mark (model included). The last column divides each
run's seconds per megapixel by the first size's, so a linear codec shows 1.0 all down
(issue 31 asks at most 1.5 at 12 MP).

Usage: python -m bench.scaling [--sizes 768x512,2048x2048,4000x3000] [--realism 0,1]
       [--texture] [--precision auto|fp32|bf16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench import ROOT
from bench._machine import machine_line, run_fresh

# Runs under a megapixel take a second or less, and one timing of them varied by 15 %
# between runs; they are timed this many times (in the same process) and the median kept.
SMALL_REPEATS = 5

SAMPLE = ROOT / "docs" / "kodim23.png"

_CHILD = """
import json, sys, time
from aeic_codec import api
from aeic_codec.runtime.allocator import keep_freed_memory
from bench._machine import peak_rss_mb
keep_freed_memory()  # as the aeic command does
job = json.loads(sys.argv[1])
if job["threads"]:
    import torch
    torch.set_num_threads(job["threads"])
if job["kind"] == "encode":
    from aeic_codec.runtime.imageio import read_image
    image, _ = read_image(job["image"])
    model = api.load_model(lambda_=job["lambda"], decoder=False)
    times = []
    for _ in range(job["repeat"]):
        start = time.perf_counter()
        data = api.encode(image, model, precision=job["precision"], texture=job["texture"])
        times.append(time.perf_counter() - start)
    open(job["file"], "wb").write(data)
else:
    data = open(job["file"], "rb").read()
    header = api.read_header(data)
    texture = api.load_texture() if job["texture"] else None
    realism = 0.0 if texture else job["realism"]  # statistics: the fidelity decoder and texture
    model = api.load_decoder(None, header.model_id_hex, realism)
    kw = {"precision": job["precision"], "realism": job["realism"], "texture": texture}
    if job["warm_up"]:  # a 64x64 decode first: the libraries' first-call costs
        import numpy as np
        encoder = api.load_model(identity=header.model_id_hex, decoder=False)
        small = api.encode(np.full((64, 64, 3), 128, np.uint8), encoder, texture=job["texture"])
        del encoder
        api.decode_image(small, model, **kw)
    times = []
    for _ in range(job["repeat"]):
        start = time.perf_counter()
        api.decode_image(data, model, **kw)
        times.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "peak_mb": peak_rss_mb()}))
"""


def run_child(job: dict[str, object]) -> dict[str, float]:
    """One encode or decode in a fresh process: its seconds and peak RSS in MB."""
    return run_fresh(_CHILD, json.dumps(job))


def upscaled(width: int, height: int, folder: Path) -> Path:
    from PIL import Image

    path = folder / f"kodim23-{width}x{height}.png"
    with Image.open(SAMPLE) as im:
        im.convert("RGB").resize((width, height), Image.LANCZOS).save(path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="768x512,2048x2048,4000x3000", help="WxH,...")
    p.add_argument("--realism", default="0,1", help="decode settings, comma-separated")
    p.add_argument("--lambda", dest="lambda_", type=float, default=None)
    p.add_argument("--precision", default="auto")
    p.add_argument("--warm-up", action="store_true", help="decode a 64x64 file before timing")
    p.add_argument(
        "--texture", action="store_true", help="also texture statistics, decoded at realism 1"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: torch's); 1 keeps timings steady on a shared machine",
    )
    args = p.parse_args()
    print(machine_line(), f"| runs with {args.threads or 'the default'} thread(s)")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    settings = [float(r) for r in args.realism.split(",")]
    first: dict[str, float] = {}
    print(f"{'run':<14} {'size':>10} {'MP':>6} {'s':>8} {'s/MP':>7} {'peak MB':>8} {'x first':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            image = upscaled(width, height, Path(tmp))
            file = Path(tmp) / f"{width}x{height}.aeic"
            mp = width * height / 1e6
            common = {
                "repeat": SMALL_REPEATS if mp < 1 else 1,
                "file": str(file),
                "precision": args.precision,
                "threads": args.threads,
                "warm_up": args.warm_up,
            }
            encode = {"kind": "encode", "image": str(image), "lambda": args.lambda_}
            runs = [("encode", {**encode, "texture": False})]
            runs += [
                (f"decode r={r:g}", {"kind": "decode", "realism": r, "texture": False})
                for r in settings
            ]
            if args.texture:
                runs += [("encode tex", {**encode, "texture": True})]
                runs += [("decode tex r=1", {"kind": "decode", "realism": 1.0, "texture": True})]
            for name, job in runs:
                result = run_child({**common, **job})
                per_mp = result["seconds"] / mp
                ratio = per_mp / first.setdefault(name, per_mp)
                print(
                    f"{name:<14} {width:>5}x{height:<4} {mp:>6.2f} {result['seconds']:>8.1f} "
                    f"{per_mp:>7.2f} {result['peak_mb']:>8.0f} {ratio:>8.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
