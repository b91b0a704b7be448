import os
import stat

import pytest

from seekrec.io import atomic_write_json


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    """Tables, manifests and reports get the mode any other new file would (mkstemp alone makes 0600)."""
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
