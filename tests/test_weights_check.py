"""``aeic weights check`` and ``bundle.check_bundle``: every tensor a file depends on is
covered, damage anywhere in them is found, and the command says so per bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from aeic_codec.bundles.bundle import BundleError, check_bundle, read_info, save_bundle
from aeic_codec.cli import main
from aeic_codec.codec.model import AEIC
from aeic_codec.nn.config import tiny_config
from aeic_codec.tools.integerize import integerize_bundle

from .conftest import make_image


@pytest.fixture(scope="module")
def int_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle with int8 weights and an integer entropy path."""
    torch.manual_seed(7)
    folder = tmp_path_factory.mktemp("check")
    src = folder / "float.safetensors"
    save_bundle(src, AEIC(tiny_config()), lambda_=8.0, encoder_dtype="int8")
    out = folder / "tiny-l8.safetensors"
    calibration = [make_image(96, 128, seed=s) for s in range(2)]
    integerize_bundle(src, out, calibration, source="generated", weights="16")
    src.unlink()
    return out


def _damaged(bundle: Path, key_of, out: Path) -> None:
    """A copy of ``bundle`` with one value of the first tensor ``key_of`` picks changed."""
    with safe_open(str(bundle), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in set(fh.keys())}
        metadata = fh.metadata()
    key = next(k for k in sorted(tensors) if key_of(k))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += 1
    save_file(tensors, str(out), metadata=metadata)
    assert read_info(out).identity == read_info(bundle).identity  # the header still says so


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_an_intact_bundle_passes(int_bundle: Path, tiny_bundle: Path) -> None:
    assert check_bundle(int_bundle).integer_identity == read_info(int_bundle).integer_identity
    assert check_bundle(tiny_bundle).identity == read_info(tiny_bundle).identity


@pytest.mark.parametrize(
    "part",
    [
        lambda k: k.startswith("g_s."),  # the decoder's float (int8-stored) weights
        lambda k: k.startswith("g_a."),
        lambda k: k.startswith("int8_scale."),
        lambda k: k.startswith("entropy_bottleneck."),
    ],
    ids=["decoder", "encoder", "int8 scale", "z prior"],
)
def test_damage_to_a_tensor_of_the_identity_is_found(int_bundle, tmp_path, part) -> None:
    damaged = tmp_path / "tiny-l8.safetensors"
    _damaged(int_bundle, part, damaged)
    with pytest.raises(BundleError, match=r"damaged: its tensors give identity \w{8}, not"):
        check_bundle(damaged)


def test_damage_to_the_integer_path_is_found(int_bundle, tmp_path) -> None:
    damaged = tmp_path / "tiny-l8.safetensors"
    _damaged(int_bundle, lambda k: k.startswith("integer.") and k.endswith(".bias"), damaged)
    with pytest.raises(BundleError, match=r"integer entropy tensors give identity \w{8}, not"):
        check_bundle(damaged)


def test_the_command_says_each_bundle_and_fails_for_a_damaged_one(int_bundle, tmp_path) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    good = folder / "a-l8.safetensors"
    shutil.copy(int_bundle, good)
    code, out, err = run("weights", "check", str(folder))
    assert (code, err) == (0, "")
    assert out == f"ok  {read_info(good).integer_identity}  {good}\n"

    bad = folder / "b-l8.safetensors"
    _damaged(int_bundle, lambda k: k.startswith("g_s."), bad)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    code, out, err = run("weights", "check", str(folder), str(cut))
    assert code == 1
    assert out == f"ok  {read_info(good).integer_identity}  {good}\n"  # the intact one still
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith("aeic: error: ") for line in lines), err
    assert lines[0].startswith(f"aeic: error: {bad}: damaged: its tensors give identity")
    assert lines[1].startswith(f"aeic: error: {cut}: cannot load bundle (")


def test_the_command_refuses_what_is_not_a_bundle(tmp_path, png_file) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run("weights", "check", str(empty), str(png_file))
    assert code == 1 and out == ""
    assert err.splitlines() == [
        f"aeic: error: {empty}: no aeic bundle (*.safetensors) in this folder",
        f"aeic: error: {png_file}: not an aeic bundle (not a safetensors file)",
    ]
    code, _, err = run("weights", "check", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err


def test_without_paths_it_checks_every_bundle_found_or_says_none_was(
    int_bundle, tmp_path, monkeypatch
) -> None:
    from aeic_codec.bundles import bundle

    monkeypatch.setattr(bundle, "SHIPPED_WEIGHTS", (tmp_path / "shipped",))
    monkeypatch.setenv("AEIC_WEIGHTS", str(int_bundle.parent))
    code, out, err = run("weights", "check")
    assert (code, err) == (0, "")
    assert out == f"ok  {read_info(int_bundle).integer_identity}  {int_bundle}\n"
    monkeypatch.delenv("AEIC_WEIGHTS")
    code, out, err = run("weights", "check")
    assert (code, out) == (1, "")
    assert err == f"aeic: error: no bundle found; searched: {tmp_path / 'shipped'}\n"
