"""Start-up cost: each command imports what it uses and nothing diffusers drags in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from aeic_codec.cli import main

MACHINERY = ("torch._dynamo", "transformers", "peft", "accelerate")


def in_fresh_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def test_decode_builds_diffusers_blocks_without_their_machinery(
    tmp_path: Path, png_file: Path, tiny_bundle: Path
):
    coded = tmp_path / "img.aeic"
    args = ["encode", str(png_file), "-o", str(coded), "--weights", str(tiny_bundle)]
    assert CliRunner().invoke(main, args).exit_code == 0
    decode = ["decode", str(coded), "-o", str(tmp_path / "out.png"), "--weights", str(tiny_bundle)]
    in_fresh_python(
        "import sys\n"
        "from aeic_codec.cli import main\n"
        f"try:\n    main({decode!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'diffusers.models.unets.unet_2d_blocks' in sys.modules\n"
        f"loaded = [m for m in {MACHINERY!r} if sys.modules.get(m) is not None]\n"
        "assert not loaded, loaded\n"
        # The rest of diffusers still imports normally afterwards.
        "from diffusers import UNet2DConditionModel\n"
        "assert sys.modules['torch._dynamo'] is not None\n"
    )
    assert (tmp_path / "out.png").stat().st_size > 0


def test_encode_imports_no_diffusers(tmp_path: Path, png_file: Path, tiny_bundle: Path):
    encode = [
        "encode",
        str(png_file),
        "-o",
        str(tmp_path / "x.aeic"),
        "--weights",
        str(tiny_bundle),
    ]
    in_fresh_python(
        "import sys\n"
        "from aeic_codec.cli import main\n"
        f"try:\n    main({encode!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' in sys.modules\n"
        "assert not [m for m in sys.modules if m.startswith('diffusers')]\n"
    )


def test_a_diffusers_that_needs_what_is_hidden_is_imported_the_ordinary_way():
    # huggingface_hub is imported by diffusers.utils unconditionally: hiding it must fail
    # the lean import, which then falls back to a plain one and builds the same network.
    in_fresh_python(
        "import sys\n"
        "from aeic_codec.nn import diffusers_blocks\n"
        "diffusers_blocks.HIDDEN += ('huggingface_hub',)\n"
        "from aeic_codec.nn.config import tiny_config\n"
        "from aeic_codec.nn.denoiser import Denoiser\n"
        "assert sys.modules['diffusers.models'].__file__.endswith('__init__.py')\n"
        "assert sys.modules['huggingface_hub'] is not None\n"
        "keys = sorted(Denoiser(tiny_config()).state_dict())\n"
        "assert any('attentions' in k for k in keys), keys[:5]\n"
    )


def test_no_collection_runs_before_the_first_file_and_collection_is_back_after(
    tmp_path: Path, png_file: Path, tiny_bundle: Path
):
    coded = tmp_path / "img.aeic"
    args = ["encode", str(png_file), "-o", str(coded), "--weights", str(tiny_bundle)]
    assert CliRunner().invoke(main, args).exit_code == 0
    out = tmp_path / "out.png"
    decode = ["decode", str(coded), "-o", str(out), "--weights", str(tiny_bundle)]
    in_fresh_python(
        "import gc, os\n"
        "from aeic_codec.cli import main\n"
        "early = []\n"
        "def seen(phase, info):\n"
        f"    if phase == 'start' and not os.path.exists({str(out)!r}):\n"
        "        early.append(info)\n"
        "gc.callbacks.append(seen)\n"
        f"try:\n    main({decode!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert not early, early\n"
        "assert gc.isenabled() and gc.get_freeze_count() > 100_000, gc.get_freeze_count()\n"
    )
    assert out.stat().st_size > 0


def test_collection_stays_as_the_caller_left_it():
    import gc

    from aeic_codec.runtime import startup

    gc.disable()
    try:
        startup.defer_collection()
        startup.resume_collection()
        assert not gc.isenabled()
    finally:
        gc.enable()
    startup.defer_collection()
    assert not gc.isenabled()
    startup.resume_collection()
    assert gc.isenabled()


def test_a_bundle_loads_without_running_default_initialisers(tiny_bundle: Path):
    import torch
    from torch.overrides import TorchFunctionMode

    from aeic_codec.bundles.bundle import load_bundle
    from aeic_codec.codec.model import AEIC
    from aeic_codec.nn.config import tiny_config

    class Seen(TorchFunctionMode):
        """Names of the torch functions called inside."""

        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None) -> object:
            self.names.add(getattr(func, "__name__", ""))
            return func(*args, **(kwargs or {}))

    initialisers = {"kaiming_uniform_", "uniform_", "fill_", "zero_", "normal_"}
    with Seen() as built:
        AEIC(tiny_config())
    assert initialisers & built.names  # a plain build initialises
    with Seen() as loaded:
        model = load_bundle(tiny_bundle)
    assert not initialisers & loaded.names, initialisers & loaded.names
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
