"""The CLI on a real terminal: the progress line, and Ctrl-C during a batch with workers."""

from __future__ import annotations

import io
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from aeic_codec.runtime.progress import BatchProgress

from .conftest import make_image

CLI = [sys.executable, "-m", "aeic_codec.cli"]
ENV = dict(os.environ, COLUMNS="120", OMP_NUM_THREADS="1")


def on_terminal(args: list[str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; returns (exit code, what it showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=slave, env=ENV)
    os.close(slave)
    shown = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        try:
            chunk = os.read(master, 4096) if ready else b""
        except OSError:  # the other side closed (Linux raises EIO)
            chunk = b""
        if not chunk:
            break
        shown += chunk
    os.close(master)
    return proc.wait(60), shown.decode()


def images(folder: Path, count: int) -> list[str]:
    folder.mkdir()
    for i in range(count):
        Image.fromarray(make_image(30 + i, 40, seed=i)).save(folder / f"im{i}.png")
    return [str(folder / f"im{i}.png") for i in range(count)]


def test_one_progress_line_per_batch_on_a_terminal_only(tmp_path: Path, tiny_bundle: Path):
    sources = images(tmp_path / "in", 3)
    coded, decoded = tmp_path / "coded", tmp_path / "decoded"
    coded.mkdir()
    decoded.mkdir()
    w = ["--weights", str(tiny_bundle)]
    code, shown = on_terminal(["encode", *sources, "-o", str(coded), *w])
    assert code == 0
    for n, source in enumerate(sources, 1):
        assert f"aeic: {n}/3 {source}  ETA " in shown
    # Redrawn in place, never scrolled: no newline until the summary, which starts clean.
    assert shown.count("\n") == 1 and "\r\x1b[Kaeic: encoded 3 file(s)" in shown
    files = sorted(str(p) for p in coded.iterdir())
    code, shown = on_terminal(["decode", *files, "-o", str(decoded), *w])
    assert code == 0 and f"aeic: 3/3 {files[2]}  ETA " in shown and shown.count("\n") == 1
    for quiet in (["-q"], ["--json"]):
        code, shown = on_terminal(["decode", *files, "-o", str(decoded), "-f", *w, *quiet])
        assert code == 0 and "ETA" not in shown and "\r" not in shown.replace("\r\n", "\n")
    # Not on a pipe.
    done = subprocess.run(
        [*CLI, "encode", *sources, "-o", str(coded), "-f", *w], capture_output=True, env=ENV
    )
    assert done.returncode == 0 and b"ETA" not in done.stderr and b"\r" not in done.stderr


def test_progress_line_text_and_eta():
    now = [100.0]
    out = io.StringIO()
    bar = BatchProgress(4, out, clock=lambda: now[0])
    bar.begin("a.png")
    assert bar.text(80) == "aeic: 1/4 a.png  ETA --:--"
    now[0] += 30.0
    bar.tiles(1, 2)  # half of the first file in 30 s: 3.5 files left at 60 s each
    assert bar.text(80) == "aeic: 1/4 a.png  ETA 3:30"
    bar.finished()
    bar.begin("a/very/long/folder/name/b.png")
    assert bar.text(80).endswith("2/4 a/very/long/folder/name/b.png  ETA 1:30")
    assert bar.text(36) == "aeic: 2/4 ...r/name/b.png  ETA 1:30"  # 35 columns
    bar.clear()
    assert out.getvalue().endswith("\r\x1b[K") and not bar.shown


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_stops_a_batch_at_once(tmp_path: Path, tiny_bundle: Path, jobs: int):
    images(tmp_path / "in", 120)
    out = tmp_path / "out"
    out.mkdir()
    args = [*CLI, "encode", str(tmp_path / "in"), "-o", str(out), "-j", str(jobs)]
    # A new session, so that the signal goes to the whole group as a terminal's Ctrl-C does,
    # and SIGINT handled as on a terminal even when the tests run as a background job (which
    # starts with SIGINT ignored, and Python keeps an ignored SIGINT ignored).
    proc = subprocess.Popen(
        [*args, "--weights", str(tiny_bundle)],
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not any(out.iterdir()):  # the workers are at work
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the batch ended or never started: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    code = proc.wait(30)
    stopped = time.monotonic() - sent
    err = proc.stderr.read().decode()
    written = len(list(out.iterdir()))
    time.sleep(1.0)
    assert code == 130 and stopped < 3.0, (code, stopped, err)
    assert len(list(out.iterdir())) == written < 120  # nothing written after the exit
    assert not list(out.glob(".*.part"))
    assert "Traceback" not in err and err.strip().endswith(f"{written} of 120 file(s) written")


def stdout_on_terminal(args: list[str]) -> tuple[int, str, bytes]:
    """Run the CLI with stdout on a pseudo-terminal: (exit code, stderr, what it showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(CLI + args, stdout=slave, stderr=subprocess.PIPE, env=ENV)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the other side closed (Linux raises EIO)
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    err = proc.stderr.read().decode()
    return proc.wait(60), err, shown


def test_binary_output_is_refused_on_a_terminal_as_gzip_does(tmp_path: Path, tiny_bundle: Path):
    (source,) = images(tmp_path / "in", 1)
    coded = tmp_path / "a.aeic"
    w = ["--weights", str(tiny_bundle)]
    for args, what in (
        (["encode", source], "compressed data"),
        (["decode", str(coded)], "PNG data"),  # refused before its input is even looked at
    ):
        code, err, shown = stdout_on_terminal([*args, "-o", "-", *w])
        assert code == 2 and shown == b""
        refusal = f"-o -: {what} not written to a terminal; redirect it (or use --force)"
        assert err == f"aeic: error: {refusal}\n"
    code, err, shown = stdout_on_terminal(["encode", source, "-o", "-", "--force", "-q", *w])
    assert code == 0 and err == "" and shown.startswith(b"AEI")
