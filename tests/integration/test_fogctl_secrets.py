"""`fogctl secret add|list|delete`: registry credentials per user, the password read from
standard input only and stored encrypted. The installed script runs as a subprocess (as an
operator runs it), on PostgreSQL and SQLite; what it stored is read with plain SQL and with
the databases' own dump tools.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from controller.secrets import SecretBox
from tests.integration.test_fogctl import FogctlInProcess, FogctlProcess, with_users
from tests.integration.test_fogctl_spec import FULL, rows

# Distinctive, with blanks and non-ASCII, so a partial echo or an encoding slip would show.
PASSWORD = "Zq8-pässwörd with blanks $HOME 'quoted'"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "secret.key"


@pytest.fixture
def fog(db_url: str, key_file: Path) -> FogctlProcess:
    """In-process (CliRunner), for the variants; the installed script is `fog_process`."""
    return with_users(FogctlInProcess(db_url, env={"FOG_SECRET_KEY_FILE": str(key_file)}))


@pytest.fixture
def fog_process(db_url: str, key_file: Path) -> FogctlProcess:
    """The installed script as an operator runs it: its own process, environment, stdin."""
    return with_users(FogctlProcess(db_url, env={"FOG_SECRET_KEY_FILE": str(key_file)}))


def add(
    fog: FogctlProcess, name: str = "company-registry", *, user: str = "alice", **opts: str
) -> subprocess.CompletedProcess[str]:
    return fog(
        "secret",
        "add",
        name,
        "--registry",
        opts.get("registry", "127.0.0.1:5000"),
        "--username",
        opts.get("username", "fog"),
        "--password-stdin",
        user=user,
        stdin=opts.get("password", PASSWORD) + "\n",
    )


def stored(db_url: str) -> list[dict[str, Any]]:
    return rows(
        db_url,
        "SELECT c.name, c.registry_host, c.username, c.password_encrypted, u.username AS owner "
        "FROM registry_credentials c JOIN users u ON u.id = c.user_id ORDER BY u.username, c.name",
    )


def test_add_list_replace_and_delete(fog_process: FogctlProcess, key_file: Path) -> None:
    fog = fog_process
    first = add(fog)
    assert (first.returncode, first.stdout) == (
        0,
        "secret/company-registry created (127.0.0.1:5000)\n",
    )
    assert first.stderr == (
        f"fogctl: created secret key file {key_file} (mode 0600); the controller must read "
        "this same file (FOG_SECRET_KEY_FILE)\n"
    )
    add(fog, "mirror", registry="registry.example:443", username="ci")

    table = fog.ok("secret", "list", user="alice").splitlines()
    assert table[0].split() == ["NAME", "REGISTRY", "USERNAME", "CREATED"]
    assert [line.split()[:3] for line in table[1:]] == [
        ["company-registry", "127.0.0.1:5000", "fog"],
        ["mirror", "registry.example:443", "ci"],
    ]
    listed = fog.json("secret", "list", user="alice")
    assert [list(c) for c in listed] == [
        ["id", "name", "registry", "username", "created_at", "updated_at"]
    ] * 2

    again = add(fog, username="fog2", password="another one")
    assert (again.returncode, again.stdout, again.stderr) == (
        0,
        "secret/company-registry replaced (127.0.0.1:5000)\n",
        "",
    )
    row = next(r for r in stored(fog.db_url) if r["name"] == "company-registry")
    assert row["username"] == "fog2"
    box = SecretBox.from_file(key_file, create=False)
    assert box.decrypt(row["password_encrypted"]) == "another one"
    assert len(stored(fog.db_url)) == 2

    assert fog.ok("secret", "delete", "mirror", user="alice") == "secret/mirror deleted\n"
    assert [r["name"] for r in stored(fog.db_url)] == ["company-registry"]
    missing = fog("secret", "delete", "mirror", user="alice")
    assert (missing.returncode, missing.stderr) == (
        1,
        "fogctl: secret 'mirror' not found for user 'alice'\n",
    )


def test_the_password_is_read_from_standard_input_only(fog_process: FogctlProcess) -> None:
    fog = fog_process
    result = fog("secret", "add", "reg", "--registry", "r.example", "--username", "u", user="alice")
    assert result.returncode == 2
    assert "--password-stdin: the password is read from standard input only" in result.stderr
    empty = fog(
        "secret", "add", "reg", "--registry", "r.example", "--username", "u", "--password-stdin",
        user="alice", stdin="\n",
    )  # fmt: skip
    assert empty.returncode == 2
    assert "--password-stdin: password must be non-empty" in empty.stderr
    bad_registry = add(fog, registry="https://r.example/v2")
    assert bad_registry.returncode == 2
    assert "--registry: must be HOST or HOST:PORT" in bad_registry.stderr
    assert stored(fog.db_url) == []


def test_delete_is_refused_while_a_live_deployment_names_it(fog: FogctlProcess) -> None:
    add(fog)
    fog.ok("apply", "-f", "-", user="alice", stdin=FULL)
    refused = fog("secret", "delete", "company-registry", user="alice")
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "fogctl: secret 'company-registry' is the image_pull_secret of deployment(s) web: "
    )
    assert len(stored(fog.db_url)) == 1

    # Once no live deployment names it (here: the deployment is deleted), it may go.
    fog.ok("delete", "deployment", "web", user="alice")
    assert fog.ok("secret", "delete", "company-registry", user="alice") == (
        "secret/company-registry deleted\n"
    )
    assert stored(fog.db_url) == []


def test_secrets_belong_to_one_user(fog: FogctlProcess) -> None:
    add(fog)
    assert fog.json("secret", "list", user="bob") == []
    other = fog("secret", "delete", "company-registry", user="bob")
    assert (other.returncode, other.stderr) == (
        1,
        "fogctl: secret 'company-registry' not found for user 'bob'\n",
    )
    assert add(fog, user="bob", username="bobs").stdout == (
        "secret/company-registry created (127.0.0.1:5000)\n"
    )
    assert [(r["owner"], r["username"]) for r in stored(fog.db_url)] == [
        ("alice", "fog"),
        ("bob", "bobs"),
    ]


def _dump(db_url: str) -> str:
    """The whole database as text, by the database's own dump tool."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        command = ["sqlite3", str(url.database), ".dump"]
    else:
        command = [
            "pg_dump", "-h", str(url.host), "-p", str(url.port or 5432),
            "-U", str(url.username), str(url.database),
        ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert "registry_credentials" in done.stdout
    return done.stdout


def test_the_password_is_nowhere_in_clear_text(
    fog_process: FogctlProcess, key_file: Path, tmp_path: Path
) -> None:
    fog = fog_process
    assert add(fog).returncode == 0
    fog.ok("apply", "-f", "-", user="alice", stdin=FULL)
    for args in (
        ("secret", "list"),
        ("secret", "list", "-o", "json"),
        ("secret", "list", "-o", "yaml"),
        ("get", "deploy"),
        ("get", "deploy", "-o", "json"),
        ("get", "deploy", "web", "-o", "yaml"),
        ("get", "deploy", "-o", "wide"),
        ("describe", "deploy", "web"),
        ("describe", "deploy", "web", "-o", "yaml"),
        ("history", "deploy", "web"),
    ):
        fog.ok(*args, user="alice")
    # Refusals and bad input print messages too: none may carry the password.
    assert fog("secret", "delete", "company-registry", user="alice").returncode == 2
    assert add(fog, "n" * 300).returncode == 2  # too long a name
    assert add(fog, registry="https://x/y").returncode == 2
    assert add(fog, user="mallory").returncode == 2
    assert add(fog, password=PASSWORD, username="").returncode == 2
    assert add(fog, password="x" * 3).returncode == 0  # replaced, so the old token is gone...
    assert add(fog).returncode == 0  # ...and back: the dump below holds PASSWORD's token

    printed = fog.printed()
    assert "company-registry" in printed  # the outputs were really collected
    assert PASSWORD not in printed

    dump = _dump(fog.db_url)
    [row] = stored(fog.db_url)
    token = row["password_encrypted"]
    assert token in dump  # the dump is complete: the credential is in it, encrypted
    assert PASSWORD not in dump
    assert token not in printed  # not even encrypted: no output shows the password in any form
    # The token opens with the key file (so it is the password, encrypted) and the key file
    # is the operator's alone.
    assert SecretBox.from_file(key_file, create=False).decrypt(token) == PASSWORD
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700


def test_the_key_file_defaults_to_the_state_directory(db_url: str, tmp_path: Path) -> None:
    fog = FogctlProcess(db_url, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    fog.env.pop("FOG_SECRET_KEY_FILE", None)
    fog.env.pop("STATE_DIRECTORY", None)
    fog.ok("user", "add", "alice")
    assert add(fog).returncode == 0
    default = tmp_path / "state" / "fog-controller" / "secret.key"
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    [row] = stored(db_url)
    assert SecretBox.from_file(default, create=False).decrypt(row["password_encrypted"]) == (
        PASSWORD
    )


def test_a_key_file_that_opens_no_stored_credential_is_warned_about(
    fog: FogctlProcess, tmp_path: Path
) -> None:
    add(fog)
    other_key = str(tmp_path / "other.key")
    result = fog(
        "secret", "add", "mirror", "--registry", "r.example", "--username", "u",
        "--password-stdin", "--secret-key-file", other_key, user="alice", stdin="pw",
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stderr.splitlines()[-1] == (
        "fogctl: warning: 1 stored credential(s) do not open with this key file: add them "
        "again with this key, or point FOG_SECRET_KEY_FILE at the controller's"
    )
