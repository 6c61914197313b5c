"""A real private image registry for tests: Debian's ``docker-registry`` (distribution 2.8).

Why a real one: what a pull failure says (unauthorized, not found, unreachable) is the
registry's and the engine's own words, which only a registry that checks credentials and
stores manifests gives. It listens on ``127.0.0.1:<free port>`` with htpasswd auth (a file
made by ``htpasswd -B`` from apache2-utils) and keeps its blobs in a directory of the run.
Engines treat 127.0.0.0/8 registries as insecure (plain HTTP) by default, so no TLS is needed
on dockerd; Podman is told so per engine (``PodmanEngine`` writes a registries.conf).

Images reach it from a harness engine: ``push_test_image`` tags the busybox test image
(``engines.build_test_image``: a static busybox imported, no registry) and pushes it with the
registry's credentials. Like ``engines``, this module imports no pytest.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import textwrap
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.engines import (
    TLS_HOST,
    Engine,
    build_test_image,
    free_port,
    install_packages,
    wait_until,
    which,
)

__all__ = ["REGISTRY_PASSWORD", "REGISTRY_USER", "Registry", "ensure_registry_installed"]

REGISTRY_USER = "fog"
# Made for this run's registry only; never a real credential.
REGISTRY_PASSWORD = "fog-test-registry-secret"


def ensure_registry_installed() -> None:
    """``docker-registry`` and ``htpasswd``, installed with apt-get when missing (root on
    Debian, as ``engines.ensure_docker_installed`` installs docker.io)."""
    packages = [
        package
        for program, package in (
            ("docker-registry", "docker-registry"),
            ("htpasswd", "apache2-utils"),
        )
        if which(program) is None
    ]
    install_packages(packages)


def _config(root: Path, port: int) -> str:
    return textwrap.dedent(
        f"""\
        version: 0.1
        log:
          level: info
          accesslog:
            disabled: true
        storage:
          filesystem:
            rootdirectory: {root / "data"}
          delete:
            enabled: true
        http:
          addr: {TLS_HOST}:{port}
        auth:
          htpasswd:
            realm: fog-test-registry
            path: {root / "htpasswd"}
        """
    )


@dataclass(eq=False)
class Registry:
    """One registry process; ``stop`` and ``start`` again keep its port and its images (a
    registry going down and coming back)."""

    root: Path
    port: int
    username: str = REGISTRY_USER
    password: str = REGISTRY_PASSWORD
    start_timeout: float = 30.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _owns_root: bool = field(default=False, init=False, repr=False)

    @classmethod
    def start_new(cls, base_dir: Path | None = None) -> Registry:
        """A registry in a fresh directory (under ``base_dir`` or /tmp), started."""
        ensure_registry_installed()
        root = Path(tempfile.mkdtemp(prefix="fog-registry-", dir=base_dir or "/tmp"))
        registry = cls(root=root, port=free_port())
        registry._owns_root = base_dir is None
        htpasswd = subprocess.run(
            [which("htpasswd") or "htpasswd", "-Bbn", registry.username, registry.password],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        (root / "htpasswd").write_text(htpasswd.stdout)
        (root / "config.yml").write_text(_config(root, registry.port))
        try:
            registry.start()
        except BaseException:
            registry.close()
            raise
        return registry

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: what image references and credentials name."""
        return f"{TLS_HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def image(self, repository: str, tag: str = "1") -> str:
        return f"{self.host}/{repository}:{tag}"

    def auth_config(self) -> dict[str, str]:
        """docker-py's ``auth_config`` for this registry."""
        return {"username": self.username, "password": self.password, "serveraddress": self.host}

    def start(self) -> None:
        """Start the registry (a no-op when running) and wait until ``/v2/`` answers."""
        if self._proc is not None and self._proc.poll() is None:
            return
        program = which("docker-registry")
        if program is None:
            raise RuntimeError("docker-registry not found; call ensure_registry_installed()")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [program, "serve", str(self.root / "config.yml")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(self._answers, self.start_timeout, f"the registry on {self.host}")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"docker-registry exited while starting:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # up, and asking for the credential
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL past 10 s; afterwards nothing listens on the port."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def close(self) -> None:
        """Stop, and remove the directory when the registry made it."""
        self.stop()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def push_test_image(self, engine: Engine, repository: str, tag: str = "1") -> str:
        """Push the busybox test image from ``engine`` as ``<host>/<repository>:<tag>`` with
        the registry's credentials; the engine's tag is removed again, so a pull elsewhere (or
        on ``engine``) really fetches it. Returns the reference."""
        reference = self.image(repository, tag)
        with contextlib.closing(engine.client()) as client:
            image_id = build_test_image(client)
            client.api.tag(image_id, f"{self.host}/{repository}", tag)
            try:
                output = client.api.push(
                    f"{self.host}/{repository}", tag, auth_config=self.auth_config()
                )
            finally:
                client.api.remove_image(reference)
        if '"error"' in output:
            raise RuntimeError(f"push of {reference} failed: {output}")
        return reference
