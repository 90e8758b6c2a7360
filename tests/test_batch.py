"""Batches, worker processes and shell pipelines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from aeic_codec.cli import batch, main

from .conftest import make_image


def test_jobs_give_the_same_bytes_and_failures_are_isolated(tmp_path: Path, tiny_bundle: Path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(20):
        folder = src / "sub" if i % 3 == 0 else src
        Image.fromarray(make_image(24 + i, 40 - i, seed=i)).save(folder / f"im{i:02d}.png")
    (src / "im07.png").write_bytes(b"\x89PNG but broken")
    outs = {}
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        out.mkdir()
        result = CliRunner().invoke(
            main,
            ["encode", str(src), "-o", str(out), "--weights", str(tiny_bundle), "-j", str(jobs)],
        )
        assert result.exit_code == 1
        assert "im07.png" in result.stderr and result.stderr.count("error:") == 1
        assert "encoded 19 file(s)" in result.stderr
        files = sorted(p.relative_to(out) for p in out.rglob("*.aeic"))
        assert len(files) == 19 and Path("sub/im00.aeic") in files
        outs[jobs] = {f: (out / f).read_bytes() for f in files}
    assert outs[1] == outs[2]


def test_stdin_stdout_pipeline(tmp_path: Path, png_file: Path, tiny_bundle: Path):
    cli = f"{sys.executable} -m aeic_codec.cli"
    out = tmp_path / "out.png"
    cmd = (
        f"{cli} encode - -o - --weights {tiny_bundle} < {png_file} | "
        f"{cli} decode - -o - --weights {tiny_bundle} > {out}"
    )
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    assert Image.open(out).size == (65, 63)


def test_json_lines_and_quiet(tmp_path: Path, png_file: Path, tiny_bundle: Path):
    import json

    result = CliRunner().invoke(
        main,
        [
            "encode",
            str(png_file),
            "-o",
            str(tmp_path / "a.aeic"),
            "--json",
            "--weights",
            str(tiny_bundle),
        ],
    )
    record = json.loads(result.stdout)
    assert record["bytes"] == (tmp_path / "a.aeic").stat().st_size
    quiet = CliRunner().invoke(
        main,
        [
            "decode",
            str(tmp_path / "a.aeic"),
            "-o",
            str(tmp_path / "a.png"),
            "-q",
            "--weights",
            str(tiny_bundle),
        ],
    )
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_usage_errors_exit_2(tmp_path: Path, png_file: Path):
    assert CliRunner().invoke(main, ["encode"]).exit_code == 2
    result = CliRunner().invoke(main, ["encode", str(png_file), str(png_file), "-o", "-"])
    assert result.exit_code == 2


class _Bytes(batch._Work):
    """A batch whose every task's output is its own name."""

    debug = False
    force = False

    def run(self, task: batch.Task, outcome: batch.Outcome, progress: object) -> dict:
        outcome.data = task.source.encode()
        return {"bytes": len(outcome.data)}


def test_ctrl_c_while_a_file_is_written_waits_until_it_is_reported(tmp_path: Path):
    """A Ctrl-C between writing a file and reporting it must not leave an unreported file."""
    tasks = [batch.Task(f"in{i}", str(tmp_path / f"out{i}")) for i in range(3)]
    delivered: list[str] = []

    def deliver(outcome: batch.Outcome) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives after the file is on disk
        delivered.append(outcome.task.source)

    # Ctrl-C live as in a terminal: a shell starts background jobs with SIGINT ignored,
    # and Python then keeps it ignored, which batch.run respects.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            batch.run(_Bytes(), tasks, deliver)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert delivered == ["in0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out0"]
    assert (tmp_path / "out0").read_bytes() == b"in0"
