"""What a new user runs into: strict --weights, refused outputs, one error form, exit codes."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from aeic_codec.bundles.bundle import BundleError, find_bundle, save_bundle
from aeic_codec.cli import batch, main
from aeic_codec.codec.model import AEIC
from aeic_codec.format.container import MAGIC
from aeic_codec.nn.config import tiny_config

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


def test_lambda_out_of_range_is_exit_2_and_lists_the_rates_in_order(tmp_path, png_file):
    out = tmp_path / "x.aeic"
    code, _, err = run("encode", str(png_file), "-o", str(out), "--lambda", "100000")
    line = one_error(err)
    assert code == 2 and "lambda 100000 is outside the range" in line and not out.exists()
    rates = [float(r) for r in line.split("own lambdas: ")[1].rstrip(")").split(", ")]
    assert rates == sorted(rates) == [12.0, 64.0, 500.0]


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
    code, _, err = run("decode", str(encoded), "-o", f"{nowhere}/", *w)  # a folder, by its /
    assert (
        code == 2
        and one_error(err) == f"aeic: error: -o {nowhere}/: folder does not exist (make it first)"
    )
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
        f"aeic: error: {bomb}: 100000x100000 is 10,000,000,000 pixels, over the limit of "
        "100,000,000 (raise it with --max-pixels)"
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


# ------------------------------------------------------------------ before torch
def fresh_run(*args: str) -> tuple[int, list[str], float, set[str]]:
    """The command in a new Python: exit code, stderr lines, wall seconds, modules imported."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "aeic_codec.cli", *args],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    lines = done.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    said = [line for line in lines if not line.startswith("import time:")]
    return done.returncode, said, seconds, imported


def test_usage_and_file_errors_come_before_torch(tmp_path, png_file, encoded, tiny_bundle):
    w = ("--weights", str(tiny_bundle))
    exists = tmp_path / "exists.aeic"
    exists.write_bytes(b"keep")
    missing = tmp_path / "missing.png"
    dangling = tmp_path / "dangling.aeic"
    dangling.symlink_to(tmp_path / "nowhere.aeic")
    too_long = tmp_path / ("n" * 251 + ".aeic")
    cases = [
        (("encode", str(missing), "-o", str(tmp_path / "m.aeic"), *w), 1, "no such file"),
        (("encode", str(png_file), "-o", str(exists), *w), 1, "exists (use --force"),
        (("encode", str(png_file), "-o", str(dangling), *w), 1, "exists (use --force"),
        (("encode", str(png_file), "-o", str(too_long), *w), 1, "(file name too long)"),
        (("encode", str(png_file), "--lambda", "abc"), 2, "is not a valid float"),
        (("encode", str(png_file), "-o", str(tmp_path / "x.png")), 2, "writes .aeic files"),
        (("encode", str(png_file), "-o", str(tmp_path / "w.aeic"), "--weights", "none"), 2, "none"),
        (("decode", str(tmp_path / "missing.aeic"), *w), 1, "no such file"),
        (("decode", str(encoded), "-o", str(png_file), *w), 1, "exists (use --force"),
        (("decode", str(encoded), "--device", "tpu"), 2, "Invalid value for '--device'"),
    ]
    seconds = []
    for args, code, message in cases:
        got, said, secs, imported = fresh_run(*args)
        assert got == code and len(said) == 1 and message in one_error("\n".join(said)), said
        assert not {"torch", "numpy"} & imported, args
        seconds.append(secs)
    assert exists.read_bytes() == b"keep"
    assert dangling.is_symlink() and not dangling.exists()
    # 0.3 s is the promise (0.06 to 0.14 s measured without -X importtime, quiet and busy
    # machine); the median of the ten keeps one slow start from failing it.
    assert sorted(seconds)[len(seconds) // 2] < 0.3, seconds


# ------------------------------------------------------------------ rough edges
def test_weights_outputs_that_cannot_be_files_are_refused_first(tmp_path, tiny_bundle, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ("weights", "set-window", str(tiny_bundle), "--pixels", "4096", "-o")
    code, _, err = run(*base, "nod/")  # wrote a file named nod
    assert code == 1 and one_error(err) == "aeic: error: 'nod/': not a file name"
    long = "w" * 251 + ".safetensors"  # failed after the work, naming the temporary file
    code, _, err = run(*base, long)
    assert code == 1 and one_error(err) == f"aeic: error: {long}: file name too long"
    assert list(tmp_path.iterdir()) == []


def test_a_folder_without_inputs_is_said(tmp_path, png_file, tiny_bundle):
    w = ("--weights", str(tiny_bundle))
    gifs, photos, out = tmp_path / "gifs", tmp_path / "photos", tmp_path / "out"
    for folder in (gifs, photos, out):
        folder.mkdir()
    Image.new("RGB", (8, 8)).save(gifs / "a.gif")
    (photos / "img.png").write_bytes(png_file.read_bytes())
    code, _, err = run("encode", str(gifs), str(photos), "-o", str(out), *w)
    kinds = ".jpeg, .jpg, .png, .tif, .tiff, .webp"
    assert code == 0 and err.splitlines()[0] == f"aeic: warning: {gifs}: no {kinds} files in it"
    assert [f.name for f in out.iterdir()] == ["img.aeic"] and str(photos) not in err
    code, _, err = run("encode", str(gifs), "-o", str(out), "-q", *w)
    assert code == 0 and err == ""


def test_odd_output_names_are_said_plainly(tmp_path, png_file, tiny_bundle):
    w = ("--weights", str(tiny_bundle))
    file = tmp_path / "file.aeic"
    file.write_bytes(b"keep")
    code, _, err = run("encode", str(png_file), "-o", f"{file}/", *w)
    assert code == 2 and one_error(err) == f"aeic: error: -o {file}/: is a file, not a folder"
    code, _, err = run("encode", str(png_file), "-o", "", *w)
    assert code == 2 and one_error(err) == "aeic: error: -o '': an empty name"
    assert file.read_bytes() == b"keep"


def test_an_output_path_beyond_the_path_limit_is_one_problem(tmp_path, png_file):
    """The mirrored layout of a deep input folder can pass the 4096-byte path limit: that
    output is refused up front, where looking for its folder raised."""
    deep = Path(tmp_path, *["d" * 250] * 17, "x.aeic")
    task = batch.Task(str(png_file), str(deep))
    said = f"cannot write {deep} (file name too long)"
    assert batch.preflight([task], force=False) == {task: said}


def test_an_output_name_near_the_limit_is_written(tmp_path, png_file, tiny_bundle):
    """The temporary file beside the output keeps only the name's start: a 250-byte name
    (the limit is 255) was refused after the work, the temporary name being 15 longer."""
    out = tmp_path / "out" / ("m" * 245 + ".aeic")
    out.parent.mkdir()
    code, _, err = run("encode", str(png_file), "-o", str(out), "--weights", str(tiny_bundle))
    assert code == 0, err
    assert out.read_bytes().startswith(MAGIC)
    assert [f.name for f in out.parent.iterdir()] == [out.name]


def test_one_failing_file_is_one_line_and_a_batch_keeps_its_summary(
    tmp_path, png_file, encoded, tiny_bundle
):
    w = ("--weights", str(tiny_bundle))
    missing = tmp_path / "missing.png"
    code, _, err = run("encode", str(missing), "-o", str(tmp_path / "m.aeic"), *w)
    assert code == 1 and one_error(err) == f"aeic: error: {missing}: no such file"
    cut = tmp_path / "cut.aeic"
    for n in (12, 20, 30):
        cut.write_bytes(encoded.read_bytes()[:n])
        code, _, err = run("decode", str(cut), "-o", str(tmp_path / "cut.png"), *w)
        assert code == 1 and "truncated" in one_error(err)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run("encode", str(png_file), str(missing), "-o", str(out), *w)
    lines = err.strip().splitlines()
    assert code == 1 and lines[0] == f"aeic: error: {missing}: no such file"
    assert len(lines) == 2 and lines[1].startswith("aeic: encoded 1 file(s), ")
    assert ", 1 failed, " in lines[1]


def test_an_image_given_to_decode_is_named_before_its_output(tmp_path, png_file, tiny_bundle):
    # Without -o the output would be the image itself: what it is matters more than that.
    for extra in ((), ("-o", str(tmp_path / "out.png"))):
        code, _, err = run("decode", str(png_file), *extra, "--weights", str(tiny_bundle))
        assert code == 1 and one_error(err) == (
            f"aeic: error: {png_file}: not an .aeic file but a PNG image "
            "(to compress it: aeic encode)"
        )
    assert not (tmp_path / "out.png").exists()


def test_threads_sets_the_thread_count_of_every_process(
    tmp_path, png_file, tiny_bundle, monkeypatch
):
    counts: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    args = ("encode", str(png_file), "-o", str(tmp_path / "t.aeic"), "--weights", str(tiny_bundle))
    assert run(*args, "--threads", "1")[0] == 0 and counts == [1]
    assert run(*args, "--threads", "0")[0] == 2
    # With workers, each gets the count (without it, the cores shared among them).
    started: list[tuple[int, int]] = []

    class Pool:
        def __init__(self, jobs: int, initializer: object, initargs: tuple) -> None:
            started.append((jobs, initargs[1]))

        def __enter__(self) -> Pool:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def imap(self, function: object, tasks: list) -> Iterator[batch.Outcome]:
            return iter(batch.Outcome(task, error="not run") for task in tasks)

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: SimpleNamespace(Pool=Pool))
    tasks = [batch.Task(str(png_file), str(tmp_path / f"{i}.aeic")) for i in range(2)]
    work = batch.EncodeWork(str(tiny_bundle), False, 100)
    for threads, expected in ((3, 3), (None, max(1, (os.cpu_count() or 1) // 2))):
        batch.run(work, tasks, lambda outcome: None, jobs=2, threads=threads)
        assert started.pop() == (2, expected)


def test_encode_and_decode_offer_the_same_devices(tmp_path, encoded):
    for command in ("encode", "decode"):
        assert "--device [cpu|cuda|mps]" in run(command, "--help")[1]
    if torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    code, _, err = run("decode", str(encoded), "-o", str(tmp_path / "m.png"), "--device", "mps")
    assert code == 2
    assert one_error(err) == "aeic: error: device mps: no Apple GPU is available to torch here"
