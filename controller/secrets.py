"""Registry passwords encrypted at rest: Fernet (AES-128-CBC with HMAC-SHA256, from the
`cryptography` package) under one key kept in a file, FOG_SECRET_KEY_FILE.

fogctl encrypts when an operator adds a credential; the controller decrypts just before a
pull. The database, its dumps and its backups hold only tokens: without the key file they are
useless, and rotating the key means re-adding the credentials. The file is made on first use,
mode 0600 in a 0700 directory when the directory is new, as ssh-keygen keeps a private key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretKeyError(RuntimeError):
    """The key file cannot be read, made, or does not open a stored credential."""


class SecretBox:
    """Encrypts and decrypts with the key of one key file."""

    def __init__(self, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise SecretKeyError(f"not a Fernet key: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path, *, create: bool = True) -> SecretBox:
        """The box of the key in `path`; with `create`, a new key when the file is missing."""
        path = Path(path)
        try:
            return cls(path.read_bytes().strip())
        except FileNotFoundError:
            if not create:
                raise SecretKeyError(
                    f"secret key file {path} does not exist (FOG_SECRET_KEY_FILE)"
                ) from None
        except OSError as exc:
            raise SecretKeyError(f"secret key file {path}: {exc.strerror}") from None
        except SecretKeyError as exc:
            raise SecretKeyError(f"secret key file {path}: {exc}") from None
        return cls(_create_key(path))

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except (InvalidToken, UnicodeError):
            raise SecretKeyError(
                "a stored credential does not open with this key (FOG_SECRET_KEY_FILE is not "
                "the key it was added with): add the credential again"
            ) from None


def _create_key(path: Path) -> bytes:
    """A new key, written whole to a temporary file and linked into place: link fails when
    the name exists, so two processes making the key at once agree on one, and no reader
    ever sees a half-written file."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # Unique per attempt, not per process: two threads of one process share a pid, and one's
    # clean-up would remove the other's file before it is linked.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key + b"\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes().strip()
    except OSError as exc:
        raise SecretKeyError(f"cannot create secret key file {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return key
