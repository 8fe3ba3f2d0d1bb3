"""Files written whole or not at all."""
from __future__ import annotations

import pytest

from retinopathy.atomic import replacing, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "old")
    with pytest.raises(ZeroDivisionError):
        with replacing(path) as f:
            f.write("half of the new")
            1 / 0
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with replacing(path, "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
