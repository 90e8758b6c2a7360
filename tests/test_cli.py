"""The command line: real files on disk, exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from aeic_codec.cli import main

from .conftest import make_image


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_encode_info_decode(tmp_path: Path, png_file: Path, tiny_bundle: Path):
    out = tmp_path / "img.aeic"
    code, _, err = run("encode", str(png_file), "-o", str(out), "--weights", str(tiny_bundle))
    assert code == 0, err
    assert "encoded 1 file(s)" in err
    code, text, _ = run("info", str(out), "--json", "--weights", str(tiny_bundle))
    assert code == 0
    info = json.loads(text)
    assert (info["width"], info["height"]) == (65, 63)
    assert info["file_bytes"] == out.stat().st_size
    assert info["model_name"] == "tiny lambda=16"
    png = tmp_path / "out.png"
    code, _, err = run("decode", str(out), "-o", str(png), "--weights", str(tiny_bundle))
    assert code == 0, err
    assert Image.open(png).size == (65, 63)


def test_colour_grid_option_and_info(tmp_path: Path, png_file: Path, tiny_bundle: Path):
    out = tmp_path / "img.aeic"
    args = ("encode", str(png_file), "-o", str(out), "--weights", str(tiny_bundle))
    code, _, err = run(*args, "--colour-grid")
    assert code == 0, err
    assert out.read_bytes()[3] == 2  # format version 2
    code, text, _ = run("info", str(out), "--weights", str(tiny_bundle))
    assert code == 0 and "format version  2" in text
    assert "colour grid     64 px cells, step 4," in text
    png = tmp_path / "out.png"
    code, _, err = run("decode", str(out), "-o", str(png), "--weights", str(tiny_bundle))
    assert code == 0, err and Image.open(png).size == (65, 63)
    code, _, err = run(*args, "--no-colour-grid", "-f")
    assert code == 0 and out.read_bytes()[3] == 1
    code, text, _ = run("info", str(out), "--weights", str(tiny_bundle))
    assert "colour grid     no" in text and "format version  1" in text


def test_refuses_to_overwrite_without_force(tmp_path: Path, png_file: Path, tiny_bundle: Path):
    out = tmp_path / "img.aeic"
    out.write_bytes(b"keep me")
    code, _, err = run("encode", str(png_file), "-o", str(out), "--weights", str(tiny_bundle))
    assert code == 1 and "exists" in err and "--force" in err
    assert out.read_bytes() == b"keep me"
    code, _, _ = run("encode", str(png_file), "-o", str(out), "--weights", str(tiny_bundle), "-f")
    assert code == 0 and out.read_bytes()[:3] == b"AEI"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-7], "CRC"),
        (lambda d: b"GIF89a" + d[6:], "bad magic"),
        (lambda d: d[:3] + b"\x09" + d[4:], "unsupported format version 9"),
        (lambda d: d[:100] + bytes([d[100] ^ 4]) + d[101:] if len(d) > 100 else d[:-1], "CRC"),
    ],
)
def test_corrupt_files_fail_cleanly(tmp_path, png_file, tiny_bundle, mutate, message):
    good = tmp_path / "good.aeic"
    assert run("encode", str(png_file), "-o", str(good), "--weights", str(tiny_bundle))[0] == 0
    bad = tmp_path / "bad.aeic"
    bad.write_bytes(mutate(good.read_bytes()))
    for cmd in (
        ["info", str(bad)],
        ["decode", str(bad), "-o", str(tmp_path / "x.png"), "--weights", str(tiny_bundle)],
    ):
        code, _, err = run(*cmd)
        assert code == 1
        assert message in err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "x.png").exists()
    assert not list(tmp_path.glob(".*part"))


def test_absurd_dimensions_refused(tmp_path: Path):
    from aeic_codec.format.container import AeicFile, pack

    f = AeicFile(200000, 200000, b"\0\0\0\0", (b"",) * 5)
    path = tmp_path / "huge.aeic"
    path.write_bytes(pack(f))
    code, _, err = run("decode", str(path), "-o", str(tmp_path / "h.png"))
    assert (code == 1 and "limit" in err.lower()) or "pixels" in err.lower()
    assert not (tmp_path / "h.png").exists()


def test_wrong_model_is_named(tmp_path, png_file, tiny_bundle, other_bundle):
    out = tmp_path / "img.aeic"
    run("encode", str(png_file), "-o", str(out), "--weights", str(tiny_bundle))
    code, _, err = run(
        "decode", str(out), "-o", str(tmp_path / "o.png"), "--weights", str(other_bundle)
    )
    assert code == 1 and "identity" in err and "searched" in err
    assert not (tmp_path / "o.png").exists()


def test_grayscale_and_alpha_warn_once(tmp_path, tiny_bundle):
    gray = tmp_path / "g.png"
    Image.fromarray(make_image(40, 40)[..., 0]).save(gray)
    rgba = tmp_path / "a.png"
    Image.fromarray(make_image(40, 40)).convert("RGBA").save(rgba)
    for src, word in ((gray, "grayscale"), (rgba, "alpha")):
        code, _, err = run(
            "encode",
            str(src),
            "-o",
            str(tmp_path / f"{src.stem}.aeic"),
            "--weights",
            str(tiny_bundle),
        )
        assert code == 0
        assert sum(word in line for line in err.splitlines()) == 1


def test_unknown_format_and_missing_file(tmp_path, tiny_bundle):
    (tmp_path / "o").mkdir()
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    code, _, err = run(
        "encode",
        str(junk),
        str(tmp_path / "missing.png"),
        "-o",
        str(tmp_path / "o"),
        "--weights",
        str(tiny_bundle),
    )
    assert code == 1
    assert f"aeic: error: {junk}: not a PNG, JPEG, WebP or TIFF image\n" in err
    assert f"aeic: error: {tmp_path / 'missing.png'}: no such file\n" in err
    assert not (tmp_path / "o" / "junk.aeic").exists()


def test_info_does_not_import_torch(tmp_path, png_file, tiny_bundle):
    out = tmp_path / "img.aeic"
    run("encode", str(png_file), "-o", str(out), "--weights", str(tiny_bundle))
    code = (
        "import sys\n"
        "from aeic_codec.cli import main\n"
        f"try:\n    main(['info', {str(out)!r}])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'numpy' not in sys.modules, 'numpy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_outputs_get_normal_permissions(tmp_path, png_file, tiny_bundle):
    import os

    out = tmp_path / "perm.aeic"
    assert run("encode", str(png_file), "-o", str(out), "--weights", str(tiny_bundle))[0] == 0
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    # Bundles too (save_bundle; safetensors writes its file 0600).
    assert tiny_bundle.stat().st_mode & 0o777 == 0o666 & ~mask


def test_encode_over_the_pixel_limit_is_refused(tmp_path, png_file, tiny_bundle):
    out = tmp_path / "big.aeic"
    code, _, err = run(
        "encode",
        str(png_file),
        "-o",
        str(out),
        "--max-pixels",
        "1000",
        "--weights",
        str(tiny_bundle),
    )
    assert code == 1 and "over the limit" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_weights_set_grid_copies_the_weights(tmp_path, png_file, tiny_bundle):
    from safetensors import safe_open

    from aeic_codec.api import read_header
    from aeic_codec.bundles.bundle import read_info

    new = tmp_path / "grid.safetensors"
    args = ("weights", "set-grid", str(tiny_bundle), "-o", str(new))
    code, _, err = run(*args, "--cell", "16", "--step", "5")
    assert code == 0, err
    old_info, new_info = read_info(tiny_bundle), read_info(new)
    assert (new_info.config.colour_grid, new_info.config.colour_grid_step) == (16, 5)
    assert new_info.identity == old_info.identity and new_info.identity in err
    assert new_info.provenance == dict(old_info.provenance, trained_colour_grid=[0, 4])
    with safe_open(str(tiny_bundle), "pt") as a, safe_open(str(new), "pt") as b:
        keys = sorted(a.keys())
        assert keys == sorted(b.keys())
        for key in keys:
            x, y = a.get_tensor(key), b.get_tensor(key)
            assert x.dtype == y.dtype and x.shape == y.shape and x.view(-1).equal(y.view(-1))
    for key in ("z_tables", "y_tables", "lambda"):
        assert new_info.metadata[key] == old_info.metadata[key]

    # Same latent streams, now with the grid; the copy decodes the original's files too.
    files = {}
    for name, weights in (("old", tiny_bundle), ("new", new)):
        files[name] = tmp_path / f"{name}.aeic"
        args = ("encode", str(png_file), "-o", str(files[name]), "--weights", str(weights))
        assert run(*args)[0] == 0
    old_file, new_file = (read_header(files[n].read_bytes()) for n in ("old", "new"))
    assert old_file.streams == new_file.streams and old_file.grid is None
    assert (new_file.grid.cell, new_file.grid.step) == (16, 5)
    for name in ("old", "new"):
        png = tmp_path / f"{name}.png"
        assert run("decode", str(files[name]), "-o", str(png), "--weights", str(new))[0] == 0
        assert Image.open(png).size == (65, 63)

    # Without --step the bundle's step stays; the provenance keeps the trained grid.
    again = tmp_path / "again.safetensors"
    assert run("weights", "set-grid", str(new), "-o", str(again), "--cell", "24")[0] == 0
    info = read_info(again)
    assert (info.config.colour_grid, info.config.colour_grid_step) == (24, 5)
    assert info.provenance["trained_colour_grid"] == [0, 4]


def test_weights_set_window_keeps_the_identity_its_files_carry(tmp_path):
    from aeic_codec.bundles.bundle import read_info

    shipped = Path(__file__).resolve().parents[1] / "weights" / "aeic-small-l500.safetensors"
    out = tmp_path / "window.safetensors"
    code, _, err = run("weights", "set-window", str(shipped), "-o", str(out), "--pixels", "4096")
    assert code == 0, err
    old, new = read_info(shipped), read_info(out)
    assert (new.config.attention_window, new.realism.attention_window) == (4096, 4096)
    assert (new.identity, new.integer_identity) == (old.identity, old.integer_identity)
    # Reported as aeic info and aeic weights list show it: the integer path's identity.
    assert err.strip() == f"aeic: wrote {out} (model {old.integer_identity})"
    assert new.provenance["trained_attention_window"] == old.provenance.get(
        "trained_attention_window", old.config.attention_window
    )
    code, _, err = run("weights", "set-window", str(shipped), "-o", str(out), "--pixels", "0")
    assert code == 2 and "0 is not in the range x>=1" in err


def test_weights_set_grid_refuses_bad_settings(tmp_path, tiny_bundle):
    out = tmp_path / "bad.safetensors"
    args = ("weights", "set-grid", str(tiny_bundle), "-o", str(out))
    code, _, err = run(*args, "--cell", "5")
    assert code == 1 and "colour_grid must be 0 or 8..4096" in err and not out.exists()
    code, _, err = run(*args, "--cell", "64", "--step", "0")
    assert code == 1 and "colour_grid_step must be in 1..64" in err and not out.exists()
    out.write_bytes(b"keep")
    code, _, err = run(*args, "--cell", "64")
    assert code == 1 and "exists" in err and out.read_bytes() == b"keep"
    not_bundle = tmp_path / "x.safetensors"
    not_bundle.write_bytes(b"\x00" * 16)
    args = ("weights", "set-grid", str(not_bundle), "-o", str(tmp_path / "y"), "--cell", "64")
    code, _, err = run(*args)
    assert code == 1 and "not a safetensors file" in err
    nowhere = tmp_path / "no" / "g.safetensors"
    code, _, err = run("weights", "set-grid", str(tiny_bundle), "-o", str(nowhere), "--cell", "64")
    assert code == 1 and f"folder {nowhere.parent} does not exist" in err and ".part" not in err


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--integer-weights", "8"], "--integer-weights needs --calibration"),
        (["--calibration-count", "2"], "--calibration-count needs --calibration"),
        (
            ["--integer-weights", "16", "--calibration-count", "2"],
            "--integer-weights and --calibration-count need --calibration",
        ),
    ],
)
def test_weights_import_refuses_integer_options_without_calibration(tmp_path, extra, named):
    # The inputs need only exist: the options are checked before anything is read.
    (tmp_path / "AEIC_SE_ft16.pkl").write_bytes(b"")
    (tmp_path / "sd-turbo").mkdir()
    (tmp_path / "halfDecoder.ckpt").write_bytes(b"")
    out = tmp_path / "se.safetensors"
    args = ["weights", "import", "--aeic", str(tmp_path / "AEIC_SE_ft16.pkl")]
    args += ["--sd-turbo", str(tmp_path / "sd-turbo")]
    args += ["--vae-decoder", str(tmp_path / "halfDecoder.ckpt"), "-o", str(out), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"aeic: error: {named}: without it the bundle has the float entropy path only "
        "(see 'main weights import --help')"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["encode", "IMG", "--bpp", "nan"], "'--bpp': nan is not a finite number"),
        (["encode", "IMG", "--bpp", "1e308"], "'--bpp': 1e+308 is not in the range 0.0<x<=24.0"),
        (["encode", "IMG", "--lambda", "inf"], "'--lambda': inf is not a finite number"),
        (["encode", "IMG", "--threads", "65536"], "'--threads': 65536 is not in the range"),
        (["decode", "FILE", "--realism", "nan"], "'--realism': nan is not a finite number"),
    ],
)
def test_numbers_that_no_file_can_use_are_usage_errors(tmp_path, png_file, args, named):
    # Before: nan reached each file as a failure, a huge --bpp a traceback, and 65536
    # threads a segmentation fault in OpenMP.
    aeic = tmp_path / "x.aeic"
    aeic.write_bytes(b"AEI")
    args = [str(png_file) if a == "IMG" else str(aeic) if a == "FILE" else a for a in args]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "out"), "-f"])
    assert result.exit_code == 2 and named in result.stderr


def test_info_reads_no_more_than_the_start_of_a_wrong_input():
    # /dev/zero never ends: read whole, it took every byte of memory.
    out = subprocess.run(
        [sys.executable, "-m", "aeic_codec.cli", "info", "/dev/zero"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == "aeic: error: /dev/zero: not an .aeic file (bad magic)"


CLOSED = "aeic: error: standard output is closed: "


@pytest.mark.parametrize(
    ("redirect", "args", "code", "message"),
    [
        (
            "<&-",
            ["encode", "-", "-o", "OUT/x.aeic"],
            1,
            "aeic: error: <stdin>: standard input is closed",
        ),
        (">&-", ["encode", "IMG", "-o", "-"], 2, f"{CLOSED}-o - writes the compressed data there"),
        (">&-", ["encode", "IMG", "-o", "OUT/x.aeic", "--json"], 2, f"{CLOSED}--json writes there"),
        (">&-", ["info", "IMG"], 2, f"{CLOSED}info writes there"),
        (">&-", ["weights", "list"], 2, f"{CLOSED}weights list writes there"),
        (">&-", ["--version"], 2, f"{CLOSED}help and version are written there"),
        (">&-", ["info", "--help"], 2, f"{CLOSED}help and version are written there"),
    ],
)
def test_a_closed_standard_stream_is_said_not_traced(
    tmp_path, png_file, redirect, args, code, message
):
    args = [str(png_file) if a == "IMG" else a.replace("OUT", str(tmp_path)) for a in args]
    command = " ".join(f"'{a}'" for a in [sys.executable, "-m", "aeic_codec.cli", *args])
    out = subprocess.run(
        ["sh", "-c", f"{command} {redirect}"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == code and out.stderr.strip() == message
    assert "Traceback" not in out.stderr
    assert list(tmp_path.glob("*.aeic")) == []


def test_sigterm_and_sighup_stop_a_batch_as_ctrl_c_does():
    import os
    import signal

    from aeic_codec.cli.batch import stopped_like_ctrl_c as _stopped_like_ctrl_c

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(KeyboardInterrupt), _stopped_like_ctrl_c():
            os.kill(os.getpid(), sig)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


# A weights command whose bundle writer then waits, so that a signal lands mid-write.
_SLOW_WRITER = """
import sys, time
import safetensors.torch as st
from aeic_codec.cli import main
written = st.save_file
def slow(*args, **kwargs):
    written(*args, **kwargs)
    print("written", flush=True)
    time.sleep(120)
st.save_file = slow
main(sys.argv[1:])
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_leaves_no_part_file_behind_a_weights_command(tmp_path, tiny_bundle, sig):
    import signal

    out = tmp_path / "out"
    out.mkdir()
    args = ["weights", "set-window", str(tiny_bundle), "-o", str(out / "w.safetensors")]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, *args, "--pixels", "4096"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "written\n"
    assert [p.suffix for p in out.iterdir()] == [".part"]
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "aeic: interrupted"
    assert list(out.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_standard_output_is_one_error_line(tiny_bundle):
    command = [sys.executable, "-m", "aeic_codec.cli", "weights", "list", "--weights"]
    with open("/dev/full", "w") as full:
        out = subprocess.run(
            [*command, str(tiny_bundle)], stdout=full, stderr=subprocess.PIPE, text=True
        )
    assert out.returncode == 1
    assert out.stderr == "aeic: error: cannot write to standard output: No space left on device\n"


def test_a_stop_signal_waits_until_the_file_written_is_reported():
    import os
    import signal

    from aeic_codec.cli.batch import _stops_deferred
    from aeic_codec.cli.batch import stopped_like_ctrl_c as _stopped_like_ctrl_c

    done = []
    with pytest.raises(KeyboardInterrupt), _stopped_like_ctrl_c(), _stops_deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("written and reported")
    assert done == ["written and reported"]
