import os

import pytest

from ggtune import atomic
from ggtune.atomic import atomic_path


def test_success_renames_onto_final_name(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"abc")
        assert not target.exists()
    assert target.read_bytes() == b"abc"
    assert list(target.parent.iterdir()) == [target]


def test_failure_keeps_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_current_umask_reads_the_mask_without_changing_it(mask):
    old = os.umask(mask)
    try:
        assert atomic.current_umask() == mask
        assert os.umask(mask) == mask  # still what it was set to
    finally:
        os.umask(old)
