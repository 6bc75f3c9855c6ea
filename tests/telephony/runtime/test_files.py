"""Secret files (``read_secret``): only a regular file that group and others cannot reach is
read; everything else is refused with a message naming the file and the fix."""
from __future__ import annotations

import os

import pytest

from telephony.runtime.files import MAX_SECRET_FILE, SecretFileError, read_secret


def test_an_owner_only_file_is_read(tmp_path):
    f = tmp_path / "pw"
    f.write_text("s3cret\nsecond line\n")
    f.chmod(0o600)
    assert read_secret(f) == "s3cret\nsecond line\n"
    f.chmod(0o400)
    assert read_secret(f).startswith("s3cret")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_a_file_group_or_others_can_reach_is_refused(tmp_path, mode):
    f = tmp_path / "pw"
    f.write_text("s3cret\n")
    f.chmod(mode)
    with pytest.raises(SecretFileError, match=rf"mode {mode:04o} .*chmod 600 {f}"):
        read_secret(f)


def test_a_symlink_a_directory_a_missing_file_and_a_huge_file_are_refused(tmp_path):
    real = tmp_path / "real"
    real.write_text("s3cret\n")
    real.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(SecretFileError, match="cannot read"):
        read_secret(link)  # O_NOFOLLOW: the file checked is the file named
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret(d)
    with pytest.raises(SecretFileError, match="cannot read"):
        read_secret(tmp_path / "missing")
    big = tmp_path / "big"
    fd = os.open(big, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x" * (MAX_SECRET_FILE + 1))
    os.close(fd)
    with pytest.raises(SecretFileError, match="over"):
        read_secret(big)
    bad = tmp_path / "bad"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"\xff\xfe")
    os.close(fd)
    with pytest.raises(SecretFileError, match="UTF-8"):
        read_secret(bad)
