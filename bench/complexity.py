"""Parameter and MAC counts of the encoder side and g_s, next to the paper's figures.

Usage: python -m bench.complexity.py
"""

from __future__ import annotations

from aeic_codec.codec.complexity import (
    encoder_macs_per_pixel,
    encoder_params,
    param_count,
    synthesis_macs_per_pixel,
)
from aeic_codec.codec.model import AEIC
from aeic_codec.nn.config import AEIC_ME, AEIC_SE
from aeic_codec.nn.transforms import SynthesisTransform
from bench._machine import machine_line
from bench._tables import md_table
from bench.report.complexity import PAPER


def rows() -> list[tuple[str, ...]]:
    out = []
    for cfg in (AEIC_SE, AEIC_ME):
        model = AEIC(cfg, decoder=False)
        model.g_s = SynthesisTransform(cfg)
        out.append(
            (
                cfg.name,
                f"{encoder_params(model) / 1e6:.2f} M",
                f"{encoder_macs_per_pixel(model) / 1e3:.1f} K",
                f"{param_count(model.g_a) / 1e6:.2f} M",
                f"{param_count(model.g_s) / 1e6:.1f} M"
                f" / {synthesis_macs_per_pixel(model) / 1e3:.0f} K",
                *PAPER[cfg.name]["encoder side"],
            )
        )
    return out


def main() -> None:
    print(machine_line())
    head = (
        "model",
        "encoder params",
        "encoder MACs/px",
        "g_a params",
        "g_s params / MACs/px",
        "paper params",
        "paper MACs/px",
    )
    print(md_table(head, rows()))


if __name__ == "__main__":
    main()
