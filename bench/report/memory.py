"""The report's memory section: peak resident memory of a fresh process that loads the
decoder side and decodes one file, as `aeic decode` does."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aeic_codec.runtime.allocator import keep_freed_memory
from bench._machine import peak_rss_mb, run_fresh
from bench._tables import md_table
from bench.report.common import bf16, heading, load_model, log, photo, size_label

if TYPE_CHECKING:
    from bench.report.plan import Plan


def child(job: dict[str, Any]) -> None:
    """In a fresh interpreter: load the decoder side, decode one file, print peak RSS."""
    import torch

    from aeic_codec import api

    torch.set_num_threads(int(job["threads"]))
    keep_freed_memory()  # as the aeic command does
    model = load_model(job["model"], encoder=False)
    loaded = peak_rss_mb()
    data = Path(str(job["file"])).read_bytes()
    t = time.perf_counter()
    api.decode(data, model, precision="auto")
    secs = time.perf_counter() - t
    peak = peak_rss_mb()
    print(json.dumps({"seconds": secs, "loaded_mb": loaded, "peak_mb": peak}))


def decode_peak(spec: dict[str, str], data: bytes, threads: int, workdir: Path) -> dict[str, float]:
    """Decode a file in a fresh process (decoder side only, as `aeic decode` loads it)."""
    file = workdir / "x.aeic"
    file.write_bytes(data)
    job = json.dumps({"model": spec, "file": str(file), "threads": threads})
    code = "import json, sys; from bench.report.memory import child; child(json.loads(sys.argv[1]))"
    return run_fresh(code, job)


def memory(plan: Plan) -> str:
    """Peak memory of a decode by size, for the first preset and the default bundle."""
    from aeic_codec import api

    rows = []
    jobs: list[tuple[str, dict[str, str], list[tuple[int, int]]]] = [
        (cfg.name, {"config": cfg.to_json()}, plan.preset_memory_sizes) for cfg in plan.presets[:1]
    ]
    if plan.bundles:
        bundle = plan.default_bundle
        jobs.append((bundle.stem, {"bundle": str(bundle.resolve())}, plan.memory_sizes))
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec, sizes in jobs:
            if not sizes:
                continue
            encoder = load_model(spec, decoder=False)
            for h, w in sizes:
                data = api.encode(photo(plan.kodak[0], h, w), encoder)
                r = decode_peak(spec, data, plan.threads, Path(tmp))
                rows.append(
                    [
                        name,
                        size_label(h, w),
                        f"{r['peak_mb']:.0f}",
                        f"{r['loaded_mb']:.0f}",
                        f"{r['seconds']:.1f}",
                    ]
                )
                log(f"memory {name} {size_label(h, w)}: {r['peak_mb']:.0f} MB")
            del encoder
    return (
        heading("Memory")
        + "\nPeak resident memory of a fresh process that loads the decoder side of the "
        f"model and decodes one file (`--precision auto`: {'bf16' if bf16() else 'fp32'} here; "
        f"{plan.threads} thread(s), tiled as `aeic decode` "
        "tiles), next to its peak right after loading the model (interpreter, torch and "
        "weights). AEIC-SE has random weights.\n\n"
        + md_table(["model", "size", "peak MB", "after load MB", "decode s"], rows)
    )
