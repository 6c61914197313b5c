"""The key file and the encryption of registry passwords (controller/secrets.py)."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controller.secrets import SecretBox, SecretKeyError


def test_a_missing_key_file_is_made_0600_and_opens_what_it_sealed(tmp_path: Path) -> None:
    path = tmp_path / "state" / "secret.key"
    token = SecretBox.from_file(path).encrypt("s3cret-pw")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert "s3cret-pw" not in token
    assert SecretBox.from_file(path).decrypt(token) == "s3cret-pw"


def test_processes_making_the_key_at_once_agree_on_one(tmp_path: Path) -> None:
    # Threads of one process share a pid: a temporary name made from it alone let one
    # thread's key be linked under another's (seen failing 1 run in 3 before mkstemp).
    for round_no in range(20):
        path = tmp_path / str(round_no) / "secret.key"
        with ThreadPoolExecutor(8) as pool:
            boxes = list(pool.map(SecretBox.from_file, [path] * 8))
        token = boxes[0].encrypt("pw")
        assert {box.decrypt(token) for box in boxes} == {"pw"}
        assert [p.name for p in path.parent.iterdir()] == ["secret.key"]


def test_another_key_names_the_setting_instead_of_a_cryptography_error(tmp_path: Path) -> None:
    token = SecretBox.from_file(tmp_path / "a.key").encrypt("pw")
    with pytest.raises(SecretKeyError, match="FOG_SECRET_KEY_FILE"):
        SecretBox.from_file(tmp_path / "b.key").decrypt(token)


def test_without_create_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SecretKeyError, match="does not exist"):
        SecretBox.from_file(tmp_path / "none.key", create=False)


def test_a_file_that_is_not_a_key_says_so(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("not a key\n")
    with pytest.raises(SecretKeyError, match="not a Fernet key"):
        SecretBox.from_file(path)
