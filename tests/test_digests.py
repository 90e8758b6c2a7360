"""The shipped bundles make the same files and pixels of the Kodak images as recorded.

The fixture (tests/reference/kodak-digests.json, written by ``python -m tests.digests
--write``) holds one entry per machine kind; a machine without Kodak images or without an
entry of its kind skips the check.
"""

from __future__ import annotations

import pytest

from tests.digests import compute, kodak_folder, machine_kind, recorded


def test_kodak_digests_unchanged() -> None:
    folder = kodak_folder()
    if folder is None:
        pytest.skip("no Kodak images beside the repository (../shared/data/kodak or AEIC_KODAK)")
    want = recorded().get(machine_kind())
    if want is None:
        pytest.skip(f"no digests recorded for {machine_kind()}")
    found = compute(folder)
    assert len(found) == len(want)
    differ = sorted(k for k in want if want[k] != found.get(k))
    assert differ == []
