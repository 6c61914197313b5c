"""The container spec end to end (issue 14), as an operator uses it: `fogctl secret add` and
`fogctl apply -f web.yaml` as processes, the daemon as a process, a real private registry
with htpasswd auth, and a real service answering HTTP on the node.

One web service: a busybox image that exists only in the private registry, pulled with the
user's credential; its command writes an environment variable into a named volume and serves
that directory with busybox `httpd` on the host network. An operator reaches it on 127.0.0.1.
Beside it, the same image without a credential fails with the registry's words. Afterwards
the registry password is searched for, in clear text, in everything the operator and the
machine kept: the daemon's log, every fogctl output, and every row of the database.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from schema.models import Base
from tests.e2e.daemon import Daemons, Sql, daemon_env, free_port
from tests.harness.engines import Cluster
from tests.harness.registry import Registry

pytestmark = pytest.mark.docker

WEB_YAML = """\
name: web
container_image: {image}
target_replicas: 1
resources: {{cpu_cores: 0.5, memory_mb: 512, storage_gb: 1}}
entrypoint: ["/bin/sh", "-c"]
command: ["echo \\"site $SITE\\" > /data/index.html && exec httpd -f -p {port} -h /data"]
env: {{SITE: north, LOG_LEVEL: debug}}
network: host
ports:
  - {{container_port: {port}}}
volumes:
  - {{name: data, mount_path: /data}}
labels: {{team: edge}}
stop_grace_seconds: 3
image_pull_secret: company-registry
"""

NO_SECRET_YAML = """\
name: nosecret
container_image: {image}
target_replicas: 1
resources: {{cpu_cores: 0.5, memory_mb: 512, storage_gb: 1}}
"""


class Fogctl:
    """The installed `fogctl` script, run as an operator runs it; every output is kept."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.outputs: list[str] = []

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("fogctl")), *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.outputs += [done.stdout, done.stderr]
        assert done.returncode == 0, f"fogctl {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout


def _get(url: str) -> str:
    """The body at `url`; a refused connection is a failed check (not yet serving)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            body: bytes = answer.read()
    except OSError as exc:
        raise AssertionError(f"GET {url}: {exc}") from exc
    return body.decode()


async def _every_row_as_text(sql: Sql) -> str:
    """A plain dump of the database: every row of every table, as text."""
    lines = []
    for table in Base.metadata.sorted_tables:
        for row in await sql.rows(f"SELECT * FROM {table.name}"):
            lines.append(f"{table.name}: {row}")
    return "\n".join(lines)


async def test_a_private_service_runs_answers_and_its_password_is_nowhere(
    db_url: str,
    sql: Sql,
    cluster: Cluster,
    engines: list[str],
    daemons: Daemons,
    registry: Registry,
    tmp_path: Path,
) -> None:
    image = await asyncio.to_thread(registry.push_test_image, cluster.engines[0], "team/web")
    key_file = tmp_path / "keys" / "secret.key"
    settings = {"FOG_DATABASE_URL": db_url, "FOG_SECRET_KEY_FILE": str(key_file)}
    fogctl = Fogctl(daemon_env(tmp_path / "state", {**settings, "FOG_USER": "alice"}))
    fogctl("user", "add", "alice")
    await sql.add_nodes(engines)
    fogctl(
        "secret",
        "add",
        "company-registry",
        "--registry",
        registry.host,
        "--username",
        registry.username,
        "--password-stdin",
        stdin=registry.password + "\n",
    )
    port = free_port()
    (tmp_path / "web.yaml").write_text(WEB_YAML.format(image=image, port=port))
    (tmp_path / "nosecret.yaml").write_text(NO_SECRET_YAML.format(image=image))
    fogctl("apply", "-f", str(tmp_path / "web.yaml"), "-f", str(tmp_path / "nosecret.yaml"))

    daemon = daemons.start(**settings)

    async def answers() -> bool:
        assert await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/") == "site north\n"
        return True

    await daemon.until(answers, what=f"the web service answering on 127.0.0.1:{port}")

    async def refused() -> str:
        reasons = [
            str(h["reason"])
            for h in await sql.rows(
                "SELECT h.reason FROM deployment_status_history h "
                "JOIN deployments d ON d.id = h.deployment_id WHERE d.name = 'nosecret'"
            )
        ]
        (reason,) = [r for r in reasons if "image pull failed" in r]
        return reason

    reason = await daemon.until(refused, what="the pull without a credential refused")
    assert "unauthorized" in reason, reason
    assert registry.host in reason, reason

    assert "unchanged" in fogctl("apply", "-f", str(tmp_path / "web.yaml"))
    described = fogctl("describe", "deployment", "web")
    assert "company-registry" in described, described
    assert "SITE" in described, described
    fogctl("get", "deployment", "web", "-o", "yaml")
    fogctl("get", "deployment", "web", "-o", "json")
    fogctl("secret", "list")
    code, _ = await daemon.terminate(within=15)
    assert code == 0, daemon.tail()

    # The password, in clear text, nowhere an operator or an attacker with a dump could look.
    dump = await _every_row_as_text(sql)
    assert "company-registry" in dump, "the dump holds the credential row"
    places = {
        "daemon log": daemon.output(),
        "fogctl outputs": "\n".join(fogctl.outputs),
        "database": dump,
        "key file": key_file.read_text(),
    }
    for place, content in places.items():
        assert registry.password not in content, f"the registry password is in the {place}"
    # The daemon did pull with it: the log names the pull, only the password is missing.
    assert any(e.get("event") == "image_pull" for e in daemon.log().events)
