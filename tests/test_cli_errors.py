"""What a new user runs into: strict --weights, refused outputs, one error form, exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from aeic_codec import batch
from aeic_codec.bundle import BundleError, find_bundle, save_bundle
from aeic_codec.cli import main
from aeic_codec.config import tiny_config
from aeic_codec.model import AEIC

from .conftest import make_image

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_error(err: str) -> str:
    """The single line of a failed run's stderr, which must have the common form."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aeic: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def encoded(tmp_path: Path, png_file: Path, tiny_bundle: Path) -> Path:
    out = tmp_path / "img.aeic"
    assert run("encode", str(png_file), "-o", str(out), "--weights", str(tiny_bundle))[0] == 0
    return out


# ------------------------------------------------------------------ --weights
def test_encode_weights_that_are_not_there_are_a_usage_error(tmp_path, png_file, tiny_bundle):
    out = tmp_path / "x.aeic"
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (tmp_path / "AEIC-SE.safetensors", "no such file or folder"),
        (png_file, "not an aeic bundle (not a safetensors file)"),
        (empty, "no aeic bundle (*.safetensors) in this folder"),
    ]
    for weights, message in cases:
        code, stdout, err = run("encode", str(png_file), "-o", str(out), "--weights", str(weights))
        assert code == 2 and stdout == ""
        assert one_error(err) == f"aeic: error: {weights}: {message}"
        assert not out.exists()  # nothing encoded with another model
    # A bundle of another lambda than asked for, named directly or in a folder.
    for weights in (tiny_bundle, tiny_bundle.parent):
        args = ("encode", str(png_file), "-o", str(out), "--weights", str(weights))
        code, _, err = run(*args, "--lambda", "4")
        assert code == 2 and "no bundle with lambda 4 found" in one_error(err)
        assert "Available: tiny@16." in err and not out.exists()
    with pytest.raises(BundleError, match="no such file or folder"):
        find_bundle(tmp_path / "missing")


def test_decode_weights_are_checked_once_and_the_identity_per_file(
    tmp_path, encoded, png_file, other_bundle
):
    out = tmp_path / "o.png"
    cases = [
        (tmp_path / "gone", "no such file or folder"),
        (png_file, "not an aeic bundle (not a safetensors file)"),
    ]
    for weights, message in cases:
        code, _, err = run("decode", str(encoded), "-o", str(out), "--weights", str(weights))
        assert code == 2 and one_error(err) == f"aeic: error: {weights}: {message}"
    # A real bundle, but not the file's model: a per-file failure, never a fallback.
    args = ("decode", str(encoded), "-o", str(out), "--weights", str(other_bundle))
    code, stdout, err = run(*args, "--json")
    assert code == 1 and not out.exists()
    line = one_error(err)
    assert line.startswith(f"aeic: error: {encoded}: no bundle with model identity ")
    assert f"searched: {other_bundle}." in line
    record = json.loads(stdout)
    assert record["input"] == str(encoded) and record["output"] == str(out)
    assert "no bundle with model identity" in record["error"]


def test_lambda_without_a_bundle_is_exit_2_and_lists_the_rates_in_order(tmp_path, png_file):
    code, _, err = run("encode", str(png_file), "-o", str(tmp_path / "x.aeic"), "--lambda", "13")
    line = one_error(err)
    assert code == 2 and "no bundle with lambda 13 found" in line
    rates = [float(r) for r in re.findall(r"aeic-small@([\d.]+)", line)]
    assert rates == sorted(rates) and len(rates) >= 1


def test_lambda_help_names_the_values_the_default_and_the_direction():
    code, text, _ = run("encode", "--help")
    helptext = " ".join(text.split())
    assert code == 0
    assert "12, 64, 500" in helptext and "default: the middle one, 64" in helptext
    assert "a larger lambda gives smaller files" in helptext


def test_weights_list_is_sorted_by_lambda(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    for i, lam in enumerate((500.0, 12.0, 64.0)):  # names sort 12, 500, 64
        torch.manual_seed(i)
        save_bundle(folder / f"t-l{lam:g}.safetensors", AEIC(tiny_config()), lambda_=lam)
    code, text, _ = run("weights", "list", "--weights", str(folder))
    assert code == 0
    tiny = [float(m) for m in re.findall(r" tiny +lambda (\S+)", text)]
    assert tiny == [12.0, 64.0, 500.0]
    code, _, err = run("weights", "list", "--weights", str(tmp_path / "none"))
    assert code == 2 and one_error(err).startswith("aeic: error: Invalid value for '--weights'")


# ------------------------------------------------------------------ outputs
def test_two_inputs_for_one_output_are_refused_before_any_work(tmp_path, tiny_bundle):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a/photo.png", "a/photo.jpg", "b/photo.png"):
        Image.fromarray(make_image(20, 20)).save(src / name)
    w = ("--weights", str(tiny_bundle))
    pairs = [
        ([src / "a"], src / "a/photo.jpg", src / "a/photo.png"),  # one folder, two formats
        ([src / "a/photo.png", src / "b/photo.png"], src / "a/photo.png", src / "b/photo.png"),
    ]
    for inputs, first, second in pairs:
        for extra in ((), ("--force",)):
            code, _, err = run("encode", *map(str, inputs), "-o", str(out), *w, *extra)
            line = one_error(err)
            assert code == 2 and f"{first} and {second} would both be written to " in line
            assert list(out.iterdir()) == []


def test_output_names_are_checked_before_any_work(tmp_path, png_file, encoded, tiny_bundle):
    w = ("--weights", str(tiny_bundle))
    jpg = tmp_path / "out.jpg"
    code, _, err = run("decode", str(encoded), "-o", str(jpg), *w)
    assert code == 2 and "writes PNG images; name the output *.png" in one_error(err)
    code, _, err = run("encode", str(png_file), "-o", str(tmp_path / "x.png"), *w)
    assert code == 2 and "writes .aeic files" in one_error(err)
    assert not jpg.exists() and not (tmp_path / "x.png").exists()

    one = tmp_path / "one.aeic"
    code, _, err = run("encode", str(png_file), str(png_file), "-o", str(one), *w)
    assert code == 2 and "2 inputs need an existing output folder" in one_error(err)
    assert not one.exists()

    nowhere = tmp_path / "nodir"
    code, _, err = run("encode", str(png_file), "-o", str(nowhere / "x.aeic"), *w)
    assert code == 2 and one_error(err).endswith(f"folder {nowhere} does not exist")
    code, _, err = run("encode", str(png_file), str(encoded), "-o", str(nowhere), *w)
    assert code == 2 and f"and {nowhere} does not exist" in one_error(err)
    assert not nowhere.exists()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """A folder nobody can write to, root included (chattr +i), or skip."""
    folder.chmod(0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):  # root: only an immutable folder refuses it
            done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
            if done.returncode != 0:
                pytest.skip("cannot make a folder read-only for this user here")
            immutable = True
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_read_only_output_is_reported_before_the_work(
    tmp_path, png_file, tiny_bundle, monkeypatch
):
    out = tmp_path / "ro"
    out.mkdir()

    def no_work(*args, **kwargs):
        raise AssertionError("the work ran although its output cannot be written")

    monkeypatch.setattr(batch.EncodeWork, "run", no_work)
    with read_only(out):
        args = ("encode", str(png_file), "-o", str(out / "x.aeic"))
        code, stdout, err = run(*args, "--weights", str(tiny_bundle), "--json")
    line = err.strip().splitlines()[0]
    assert code == 1
    assert line.startswith(f"aeic: error: {png_file}: cannot write {out / 'x.aeic'} (folder {out}:")
    assert json.loads(stdout)["input"] == str(png_file)


# ------------------------------------------------------------------ error lines
def test_errors_have_one_form_and_name_the_input_once(tmp_path, tiny_bundle):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    out = tmp_path / "o"
    out.mkdir()
    args = ("encode", str(junk), "-o", str(out), "--weights", str(tiny_bundle))
    code, stdout, err = run(*args, "--json")
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 1 and errors == [f"aeic: error: {junk}: not a PNG, JPEG, WebP or TIFF image"]
    assert json.loads(stdout) == {
        "input": str(junk),
        "output": str(out / "junk.aeic"),
        "error": "not a PNG, JPEG, WebP or TIFF image",
    }
    # click's own usage errors take the same form (not "Usage: ... Error: ...").
    for args in (["encode", "x.png", "--lambda", "abc"], ["encode"], ["decode", "--nope"]):
        code, _, err = run(*args)
        assert code == 2 and one_error(err).endswith(f"(see 'main {args[0]} --help')")
    code, _, err = run("info", str(tmp_path / "missing.aeic"))
    assert code == 1 and one_error(err) == f"aeic: error: {tmp_path / 'missing.aeic'}: no such file"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a size and holds no pixels (what a decompression bomb starts as)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_a_huge_image_header_gets_the_tools_own_limit_message(tmp_path, tiny_bundle):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))  # far past Pillow's own bomb limit
    args = ("encode", str(bomb), "-o", str(tmp_path / "b.aeic"))
    code, _, err = run(*args, "--weights", str(tiny_bundle))
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 1 and errors == [
        f"aeic: error: {bomb}: 100000x100000 is 10000.0 megapixels, over the limit of 100 "
        "(raise it with --max-pixels)"
    ]
    assert "decompression" not in err.lower()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, encoded):
    code, _, err = run("decode", str(encoded), "-o", str(tmp_path / "c.png"), "--device", "cuda")
    assert code == 2
    assert one_error(err) == "aeic: error: device cuda: no CUDA GPU is available to torch here"


def test_the_readme_quick_start_runs_twice(tmp_path, tiny_bundle, monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [c.strip().split() for c in block.replace("\\\n", " ").split("&&")]
    aeic = [c[1:] for c in commands if c[0].endswith("/aeic")]
    assert [c[0] for c in aeic] == ["encode", "decode"]
    (tmp_path / "docs").mkdir()
    Image.fromarray(make_image(40, 48)).save(tmp_path / "docs" / "kodim23.png")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        for args in aeic:
            code, _, err = run(*args, "--weights", str(tiny_bundle))
            assert code == 0, err
    assert Image.open(tmp_path / "kodim23-decoded.png").size == (48, 40)
