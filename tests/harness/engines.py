"""Real Docker engines ("fog nodes") for integration tests and benchmarks.

Why real engines: the controller's hard cases (a node that dies mid-rollout, an engine that
rejects a host option, a container that exits at once) are exactly the ones a mocked Docker API
gets wrong. This module starts several private ``dockerd`` daemons side by side on one machine,
each with its own data root, exec root, managed containerd, containerd namespace, trust key and
config file, so that they behave like independent nodes; no registry is needed because the test
image is imported from a rootfs tarball holding the host's static busybox.

It imports no pytest on purpose: benchmarks drive the same engines.

Set ``FOG_TEST_DOCKER_URLS`` (comma-separated Docker URLs) to use engines that already run
instead; those are never stopped (``Engine.stop``/``kill``/``start`` refuse to touch them).

How containers must be created on these engines (measured on Debian 12, dockerd 20.10.24,
containerd 1.6, runc, kernel 6.18, cgroup v1 with the cgroupfs driver, overlay2 on ext4):

* ``--bridge=none`` leaves only the ``host`` and ``none`` networks. Creating a container with
  the default network mode still works: the daemon skips attaching it to the missing bridge
  and the container gets a network namespace with loopback only (``NetworkMode`` reads
  ``"default"``, ``NetworkSettings.Networks`` lists ``bridge`` with empty IDs). Explicit
  ``network_mode="bridge"``, ``"none"`` and ``"host"`` all create and start too. Use
  ``"host"`` when a test must reach a port. The default mode is the cheapest: ``"none"``
  makes libnetwork build a sandbox (a re-exec of dockerd as a prestart hook), which doubles
  the start time (below).
* ``security_opt=["no-new-privileges"]`` (and ``"no-new-privileges:true"``), ``pids_limit``,
  ``nano_cpus``, ``mem_limit`` (with or without ``memswap_limit``), ``read_only``,
  ``cap_drop=["ALL"]`` and ``restart_policy={"Name": "unless-stopped"}`` all work, alone and
  together.
* ``storage_opt={"size": "1G"}`` fails at *create* with HTTP 500:
  ``--storage-opt is supported only for overlay over xfs with 'pquota' mount option``.
* A GPU ``device_requests`` entry is accepted at *create* and fails at *start* with HTTP 500:
  ``could not select device driver "" with capabilities: [[gpu]]`` (with ``driver="nvidia"``:
  ``could not select device driver "nvidia" with capabilities: [[gpu]]``). The created
  container is left behind in state ``created``; callers must remove it.
* Timings on the 2-core machine (one engine, test image): one create+start takes 0.12-0.14 s
  with the default network mode and 0.22-0.27 s with ``network_mode="none"`` (0.27 s with all
  the host options above). 50 create+start from 8 threads take 3.1 s with the default mode
  (median 0.49 s per call, max 0.67 s) and 6.4 s with ``"none"`` (median 1.05 s, max 1.5 s);
  force-removing the 50 takes 1.8-2.2 s. Three engines start in about 0.5 s (in parallel) and
  stop in about 1.2 s with a running container each.

A TLS-protected engine (``Engine.in_dir(..., tls=True)``, ``Cluster.start(n, tls=True)``) also
listens on ``tcp://127.0.0.1:<free port>`` with ``--tlsverify``, the way a remote fog node is
exposed, using certificates made for this run (``EngineCertificates``: a CA of its own from
``trustme``, a server certificate for 127.0.0.1 and a client certificate, in Docker's
``DOCKER_CERT_PATH`` layout). Its unix socket stays, unprotected, for the harness's own
bookkeeping (images, clean-up, readiness), so only the code under test speaks TLS.

Stopping an engine stops its containers (they exit on ``SIGTERM`` at once); ``unless-stopped``
containers come back when the same engine starts again. ``kill`` is a power cut: dockerd,
its containerd, every shim and every container process of that engine get ``SIGKILL``; on the
next start the daemon marks the containers exited (code 255) and restarts ``unless-stopped``
ones.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import docker
import docker.errors
import trustme
from docker.types import Healthcheck

__all__ = [
    "API_VERSION",
    "CERT_FILES",
    "DEFAULT_CMD",
    "DEFAULT_ENGINE_KIND",
    "ENGINE_KINDS",
    "TEST_IMAGE",
    "TEST_LABEL",
    "URLS_ENV",
    "Cluster",
    "Engine",
    "EngineCertificates",
    "EngineKind",
    "PodmanEngine",
    "build_image",
    "build_test_image",
    "ensure_docker_installed",
    "find_static_busybox",
    "free_port",
    "install_packages",
    "wait_until",
    "which",
]

API_VERSION = "1.41"
TEST_IMAGE = "fog-test/busybox:latest"
URLS_ENV = "FOG_TEST_DOCKER_URLS"
TEST_LABEL = "fog-test"

# PID 1 of a container ignores signals it has no handler for, so a plain ``sleep`` would make
# every ``docker stop`` wait the full grace period. The trap exits at once, and ``wait`` (unlike
# a foreground ``sleep``) is interrupted by the trapped signal.
DEFAULT_CMD: tuple[str, ...] = (
    "/bin/sh",
    "-c",
    'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done',
)

APPLETS: tuple[str, ...] = (
    "[",
    "ash",
    "cat",
    "date",
    "echo",
    "env",
    "false",
    "grep",
    "head",
    "hostname",
    "httpd",
    "id",
    "kill",
    "ls",
    "mkdir",
    "nc",
    "printf",
    "ps",
    "rm",
    "seq",
    "sh",
    "sleep",
    "tail",
    "test",
    "timeout",
    "touch",
    "true",
    "uname",
    "wc",
    "wget",
    "yes",
)

_SBIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_MAX_UNIX_PATH = 104  # sun_path is 108 bytes on Linux; keep a margin for containerd's suffixes
_ENGINE_COMMS = frozenset({"dockerd", "containerd", "containerd-shim"})
_MNT_DETACH = 2


# --- polling -------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> None:
    """Poll ``predicate`` until true; raise ``TimeoutError`` naming ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# --- installation --------------------------------------------------------------------------


def _search_path() -> str:
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    parts += [d for d in _SBIN_DIRS if d not in parts]
    return os.pathsep.join(parts)


def _which(program: str) -> str | None:
    return shutil.which(program, path=_search_path())


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter (statically linked)."""
    try:
        with path.open("rb") as f:
            ident = f.read(16)
            if len(ident) < 16 or ident[:4] != b"\x7fELF":
                return False
            is64 = ident[4] == 2
            endian = "<" if ident[5] == 1 else ">"
            if is64:
                header = f.read(48)
                phoff, phentsize, phnum = (
                    struct.unpack_from(endian + "Q", header, 16)[0],
                    *struct.unpack_from(endian + "HH", header, 38),
                )
            else:
                header = f.read(36)
                phoff, phentsize, phnum = (
                    struct.unpack_from(endian + "I", header, 12)[0],
                    *struct.unpack_from(endian + "HH", header, 26),
                )
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    for i in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == pt_interp:
            return False
    return True


def find_static_busybox() -> Path | None:
    """The host's statically linked busybox (the only thing the test image needs), if any."""
    candidates = [Path("/bin/busybox"), Path("/usr/bin/busybox"), Path("/bin/busybox-static")]
    found = _which("busybox")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and _is_static_elf(candidate.resolve()):
            return candidate.resolve()
    return None


def _external_urls() -> list[str]:
    return [u.strip() for u in os.environ.get(URLS_ENV, "").split(",") if u.strip()]


def which(program: str) -> str | None:
    """``program``'s path, looking in the sbin directories too (root's tools live there)."""
    return _which(program)


def install_packages(packages: Sequence[str]) -> None:
    """Install Debian ``packages`` with apt-get (root on Debian; a fresh CI machine); raises
    ``RuntimeError`` naming them otherwise. Nothing to install: nothing done."""
    if not packages:
        return
    if os.geteuid() != 0 or not _which("apt-get"):
        raise RuntimeError(
            f"the test harness needs {', '.join(packages)}; install them "
            f"(Debian: apt-get install -y {' '.join(packages)}) or run as root on Debian"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": _search_path()}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed with exit code {result.returncode}:\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )


def ensure_docker_installed(*, podman: bool = False) -> None:
    """Make sure dockerd (unless external engines are configured) and static busybox exist,
    and with ``podman`` Podman and conmon as well.

    Installs Debian's ``docker.io``, ``podman`` and ``busybox-static`` with apt-get when missing
    and we are root; raises ``RuntimeError`` saying what is missing otherwise.
    """
    need_daemon = not _external_urls()
    missing_daemon = need_daemon and not all(
        _which(p) for p in ("dockerd", "containerd", "containerd-shim-runc-v2", "runc")
    )
    missing_podman = podman and not all(_which(p) for p in ("podman", "conmon"))
    missing_busybox = find_static_busybox() is None
    packages = (
        (["docker.io"] if missing_daemon else [])
        + (["podman"] if missing_podman else [])
        + (["busybox-static"] if missing_busybox else [])
    )
    if not packages:
        return
    install_packages(packages)
    if need_daemon and not _which("dockerd"):
        raise RuntimeError("apt-get installed docker.io but dockerd is still not on PATH")
    if podman and not _which("podman"):
        raise RuntimeError("apt-get installed podman but it is still not on PATH")
    if find_static_busybox() is None:
        raise RuntimeError("apt-get installed busybox-static but no static busybox was found")


@cache
def _dockerd_help() -> str:
    dockerd = _which("dockerd")
    if dockerd is None:
        raise RuntimeError("dockerd not found; call ensure_docker_installed() first")
    result = subprocess.run(
        [dockerd, "--help"], capture_output=True, text=True, check=False, timeout=30
    )
    return result.stdout + result.stderr


@cache
def _dockerd_major() -> int:
    dockerd = _which("dockerd")
    if dockerd is None:
        raise RuntimeError("dockerd not found; call ensure_docker_installed() first")
    out = subprocess.run(
        [dockerd, "--version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    match = re.search(r"version (\d+)\.", out)
    return int(match.group(1)) if match else 0


# --- processes and mounts ------------------------------------------------------------------


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    comm: str
    cmdline: str


def _proc_table() -> dict[int, _Proc]:
    table: dict[int, _Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = _Proc(
            pid=int(entry),
            ppid=int(fields[1]),
            state=fields[0],
            comm=comm,
            cmdline=raw.replace(b"\0", b" ").decode(errors="replace"),
        )
    return table


def _unescape_mountinfo(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    points: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point == str(root) or point.startswith(prefix):
                points.append(point)
    return points


def _unmount_under(root: Path) -> None:
    """Lazily unmount what a daemon left mounted below ``root`` (deepest first)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for point in sorted(set(_mounts_under(root)), key=len, reverse=True):
        libc.umount2(point.encode(), _MNT_DETACH)  # EINVAL once a parent went: fine


def _remove_tree(root: Path) -> None:
    if not root.exists():
        return
    _unmount_under(root)
    shutil.rmtree(root)


# --- TLS -----------------------------------------------------------------------------------

# Docker's DOCKER_CERT_PATH layout, which the controller reads per node as well.
CERT_FILES: tuple[str, ...] = ("ca.pem", "cert.pem", "key.pem")
TLS_HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on right now (on loopback)."""
    with socket.socket() as s:
        s.bind((TLS_HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _write_private(path: Path, data: bytes) -> None:
    """A key file readable by its owner only, as a real key must be (dockerd does not check,
    but a test that copies the habit elsewhere should find it right)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_cert_dir(directory: Path, trusted: trustme.CA, leaf: trustme.LeafCert) -> Path:
    """``directory`` holding ca.pem (the CA ``trusted`` to sign the peer), cert.pem and key.pem
    (``leaf``, whose chain goes into cert.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(trusted.cert_pem.bytes())
    (directory / "cert.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    _write_private(directory / "key.pem", leaf.private_key_pem.bytes())
    return directory


@dataclass(eq=False)
class EngineCertificates:
    """TLS material for one engine, made fresh for each run (nothing long-lived to leak): a CA
    of its own, the server's certificate for 127.0.0.1 (``server_dir``, what dockerd's
    ``--tlscacert/--tlscert/--tlskey`` read) and a client certificate it accepts
    (``client_dir``, what the controller reads for the node)."""

    directory: Path
    ca: trustme.CA

    @classmethod
    def generate(cls, directory: Path) -> EngineCertificates:
        certs = cls(directory, trustme.CA(organization_name="fog-test engine CA"))
        server = certs.ca.issue_cert(TLS_HOST, "localhost", common_name="fog-test engine")
        write_cert_dir(certs.server_dir, certs.ca, server)
        certs.write_client_dir(certs.client_dir)
        return certs

    @property
    def server_dir(self) -> Path:
        return self.directory / "server"

    @property
    def client_dir(self) -> Path:
        return self.directory / "client"

    def write_client_dir(
        self,
        target: Path,
        *,
        signed_by: trustme.CA | None = None,
        trusting: trustme.CA | None = None,
        not_after: datetime | None = None,
    ) -> Path:
        """A client certificate directory at ``target``: its certificate is issued by this
        engine's CA unless ``signed_by`` says otherwise, its ca.pem trusts this engine's CA
        unless ``trusting`` does; ``not_after`` in the past makes an expired certificate."""
        issuer = signed_by or self.ca
        not_before = None
        if not_after is not None and not_after < datetime.now(UTC):
            not_before = not_after - timedelta(days=1)
        # An identity, not only a common name: without one trustme writes an empty critical
        # subjectAltName, which Go's TLS stack (dockerd) rejects as "unhandled critical
        # extension".
        leaf = issuer.issue_cert(
            "fog-controller",
            common_name="fog-controller",
            not_before=not_before,
            not_after=not_after,
        )
        return write_cert_dir(target, trusting or self.ca, leaf)


def _tls_context(cert_dir: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert_dir / "ca.pem"))
    context.load_cert_chain(str(cert_dir / "cert.pem"), str(cert_dir / "key.pem"))
    return context


# --- engines -------------------------------------------------------------------------------


def _ping(url: str, timeout: float = 2.0, tls: Path | None = None) -> bool:
    """True if the Docker API at ``url`` answers ``GET /_ping`` with 200; a TCP URL is spoken
    to over TLS with the client certificate directory ``tls`` when given."""
    parts = urlsplit(url)
    try:
        if parts.scheme in ("unix", "http+unix"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(parts.path)
            except OSError:
                sock.close()
                raise
        elif parts.scheme in ("tcp", "http", "https") and parts.hostname and parts.port:
            if parts.scheme == "https" and tls is None:
                raise ValueError(f"{url} needs a client certificate directory")
            sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
            if tls is not None:
                sock = _tls_context(tls).wrap_socket(sock, server_hostname=parts.hostname)
        else:
            raise ValueError(f"unsupported Docker URL: {url}")
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            reply = b""
            while b"\r\n" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and reply.split(b" ", 2)[1:2] == [b"200"]


_LIVE_ENGINES: set[Engine] = set()
_LIVE_LOCK = threading.Lock()


@dataclass(eq=False)
class Engine:
    """One fog node: a private dockerd with its own managed containerd.

    ``root`` holds everything the engine owns (socket, data, exec state, log, pid file), so
    starting the same ``Engine`` again brings back its images and containers.
    """

    name: str
    url: str
    root: Path | None = None
    external: bool = False
    start_timeout: float = 90.0
    stop_timeout: float = 60.0
    # A TLS-protected engine: its certificates and the loopback port of its --tlsverify
    # listener (kept across restarts, as a real node keeps its address).
    certs: EngineCertificates | None = None
    tls_port: int | None = None
    # dockerd's --storage-driver (None: the engine's default, overlay2 here). "vfs" is what
    # nested Docker and some edge boards run: no copy-on-write, and no disk quota on ext4.
    storage_driver: str | None = None
    # A bridge the harness made (tests/harness/bridge.py) for this engine's containers; None:
    # ``--bridge=none``. With one, published ports are forwarded by docker-proxy on 127.0.0.1
    # (``--ip``), there being no iptables rules (``--iptables=false``) to do it.
    bridge: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    # Process names of this kind of engine's daemons (their descendants count as well).
    engine_comms: ClassVar[frozenset[str]] = _ENGINE_COMMS

    @classmethod
    def in_dir(
        cls,
        name: str,
        base_dir: Path,
        *,
        tls: bool = False,
        storage_driver: str | None = None,
        bridge: str | None = None,
    ) -> Engine:
        root = Path(base_dir).absolute() / name
        engine = cls(
            name=name,
            url=f"unix://{root}/docker.sock",
            root=root,
            storage_driver=storage_driver,
            bridge=bridge,
        )
        if tls:
            engine.certs = EngineCertificates.generate(root / "tls")
            engine.tls_port = free_port()
        return engine

    @property
    def tls_url(self) -> str:
        """``tcp://127.0.0.1:<port>`` of the TLS listener, as an operator writes it into
        ``nodes.docker_url``."""
        if self.tls_port is None:
            raise RuntimeError(f"{self.name} was started without TLS")
        return f"tcp://{TLS_HOST}:{self.tls_port}"

    # paths

    def _root(self) -> Path:
        if self.external or self.root is None:
            raise RuntimeError(f"{self.name} ({self.url}) is an external engine; not ours to run")
        return self.root

    @property
    def socket_path(self) -> Path:
        return self._root() / "docker.sock"

    @property
    def log_path(self) -> Path:
        return self._root() / "dockerd.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # lifecycle

    def start(self) -> None:
        """Start dockerd and wait until its API answers; a no-op if it is already running."""
        with self._lock:
            if self.external:
                if not _ping(self.url):
                    raise RuntimeError(f"external engine {self.url} does not answer /_ping")
                return
            self.spawn()
            self.wait_ready()

    def spawn(self) -> None:
        """Launch dockerd without waiting for it (``Cluster.start`` waits in parallel)."""
        with self._lock:
            root = self._root()
            if self._proc is not None and self._proc.poll() is None:
                return
            self._reap()
            self._kill_leftovers()
            longest = root / "exec" / "containerd" / "containerd.sock.ttrpc"
            if len(str(longest)) >= _MAX_UNIX_PATH:
                raise RuntimeError(f"engine root {root} is too long for unix socket paths")
            for sub in ("data", "exec"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            # After a kill the old daemons linger as zombies until PID 1 reaps them, and
            # dockerd takes a pid file naming a zombie for a live containerd: it then waits
            # for that one instead of starting its own. No process of ours is alive here.
            for stale in (root / "docker.pid", root / "exec" / "containerd" / "containerd.pid"):
                stale.unlink(missing_ok=True)
            config: dict[str, Any] = {}
            if _dockerd_major() < 23:
                # Before 23.0 the engine ID comes from a trust key in /etc/docker shared by
                # every daemon on the machine; give each node its own so their IDs differ.
                config["deprecated-key-path"] = str(root / "key.json")
            (root / "daemon.json").write_text(json.dumps(config))
            self._proc = self._popen(self._command(root), root)
            with _LIVE_LOCK:
                _LIVE_ENGINES.add(self)

    def _command(self, root: Path) -> list[str]:
        dockerd = _which("dockerd")
        if dockerd is None:
            raise RuntimeError("dockerd not found; call ensure_docker_installed() first")
        cmd = [
            dockerd,
            "--config-file",
            str(root / "daemon.json"),
            f"--bridge={self.bridge or 'none'}",
            "--iptables=false",
            "--ip-masq=false",
        ]
        if "--ip6tables" in _dockerd_help():
            cmd.append("--ip6tables=false")
        if self.bridge is not None:
            cmd += ["--userland-proxy=true", f"--ip={TLS_HOST}"]
        else:
            cmd.append("--userland-proxy=false")
        cmd += [
            "-H",
            self.url,
            "--data-root",
            str(root / "data"),
            "--exec-root",
            str(root / "exec"),
            "--pidfile",
            str(root / "docker.pid"),
            "--containerd-namespace",
            self.name,
            "--containerd-plugins-namespace",
            f"{self.name}-plugins",
        ]
        if self.storage_driver is not None:
            cmd.append(f"--storage-driver={self.storage_driver}")
        if self.certs is not None:
            server = self.certs.server_dir
            cmd += [
                "-H",
                self.tls_url,
                "--tlsverify",
                "--tlscacert",
                str(server / "ca.pem"),
                "--tlscert",
                str(server / "cert.pem"),
                "--tlskey",
                str(server / "key.pem"),
            ]
        return cmd

    @staticmethod
    def _popen(cmd: list[str], root: Path) -> subprocess.Popen[bytes]:
        setpriv = _which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            # If the test process dies without running atexit (SIGKILL, SIGTERM), the kernel
            # sends dockerd SIGTERM. The parent-death signal fires when the *thread* that
            # forked exits, hence main thread only.
            cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
        with (root / "dockerd.log").open("ab") as log:
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal ^C must not hit dockerd before teardown
                env={**os.environ, "PATH": _search_path()},
            )

    def wait_ready(self) -> None:
        """Block until the API answers ``/_ping``; raise with the log tail if dockerd died."""
        try:
            wait_until(self.poll_ready, self.start_timeout, f"{self.name} to answer /_ping")
        except TimeoutError as exc:
            self.kill()
            raise TimeoutError(f"{exc}; log tail:\n{self.log_tail()}") from exc

    def poll_ready(self) -> bool:
        """One readiness check; raises with the log tail if dockerd already died."""
        proc = self._proc
        if proc is None:
            raise RuntimeError(f"{self.name} was not spawned")
        if proc.poll() is not None:
            raise RuntimeError(
                f"the daemon of {self.name} exited with code {proc.returncode} while "
                f"starting; log tail:\n{self.log_tail()}"
            )
        return _ping(self.url) and self._tls_ping()

    def _tls_ping(self) -> bool:
        """True without TLS; else whether the TLS listener answers a client it should accept."""
        if self.certs is None:
            return True
        return _ping(self.tls_url, tls=self.certs.client_dir)

    def stop(self) -> None:
        """SIGTERM dockerd and wait until no process of this engine is left.

        dockerd stops its containers (the test image exits on SIGTERM at once) and its
        containerd before it exits; anything still alive after the deadline gets SIGKILL.
        """
        with self._lock:
            self.request_stop()
            self.wait_stopped()

    def request_stop(self) -> None:
        """Send dockerd SIGTERM without waiting (``Cluster.stop_all`` stops all at once)."""
        with self._lock:
            self._root()
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def _wait_exit(self) -> None:
        """Wait for the daemon process to exit after SIGTERM; SIGKILL it past the deadline."""
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)

    def wait_stopped(self) -> None:
        """Wait for a stop requested with ``request_stop``; SIGKILL what outlives the deadline."""
        with self._lock:
            self._root()
            self._wait_exit()
            try:
                wait_until(
                    lambda: not self._engine_pids(),
                    self.stop_timeout,
                    f"containerd and shims of {self.name} to exit",
                )
            except TimeoutError:
                self._kill_leftovers()
            self._forget()

    def kill(self) -> None:
        """A power cut: SIGKILL dockerd, its containerd, shims and container processes."""
        with self._lock:
            self._root()
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
            self._kill_leftovers()
            self._forget()

    def _forget(self) -> None:
        self._reap()
        with _LIVE_LOCK:
            _LIVE_ENGINES.discard(self)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait(timeout=30)
            self._proc = None

    def _engine_pids(self) -> set[int]:
        """Live (non-zombie) processes of this engine: daemons, shims and their descendants."""
        if self.root is None:
            return set()
        marker = f"{self.root}/"
        table = _proc_table()
        roots = {
            p.pid
            for p in table.values()
            if (p.comm in self.engine_comms and marker in p.cmdline)
            or (self._proc is not None and p.pid == self._proc.pid)
        }
        children: dict[int, list[int]] = {}
        for p in table.values():
            children.setdefault(p.ppid, []).append(p.pid)
        found: set[int] = set()
        todo = list(roots)
        while todo:
            pid = todo.pop()
            if pid in found:
                continue
            found.add(pid)
            todo.extend(children.get(pid, ()))
        return {pid for pid in found if table[pid].state not in ("Z", "X")}

    def _kill_leftovers(self) -> None:
        def gone() -> bool:
            pids = self._engine_pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if self._proc is not None:
                self._proc.poll()  # reap dockerd so it does not count as alive
            return not pids

        wait_until(gone, 30, f"processes of {self.name} to die")

    def is_running(self) -> bool:
        """True if the engine answers its API (and, for ours, its dockerd is alive)."""
        if self.external:
            return _ping(self.url)
        proc = self._proc
        return proc is not None and proc.poll() is None and _ping(self.url) and self._tls_ping()

    def client(self) -> docker.DockerClient:
        """A new client for this engine; the caller must ``close()`` it."""
        return docker.DockerClient(base_url=self.url, version=API_VERSION, timeout=60)


# Podman's containers.conf for one engine. ``default_ulimits``: without them every start is
# refused with "error setting rlimits" on these machines. The rest keeps the engine's state
# under its root and off the host's: file locks (not /dev/shm/libpod_lock, which every rootful
# podman shares), events in a file (there is no journald), cgroupfs (no systemd), and the CNI
# backend with a private config directory (netavark makes /run/containers/networks). ``netns``
# covers Podman's own API only; the Docker API's default is a bridge (see PodmanEngine).
_PODMAN_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]
netns = "none"

[network]
network_backend = "cni"
network_config_dir = "{root}/net"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{root}/events.log"
lock_type = "file"
tmp_dir = "{root}/tmp"
static_dir = "{root}/data/libpod"
volume_path = "{root}/data/volumes"
"""

# Podman's registries.conf for one engine: registries on loopback are spoken to over plain
# HTTP, as dockerd does for 127.0.0.0/8 by default (Podman has no such default and answers a
# pull from the test registry with "http: server gave HTTP response to HTTPS client"). A
# location matches every port of its host. Short names keep resolving on Docker Hub.
_PODMAN_REGISTRIES_CONF = """\
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "127.0.0.1"
insecure = true

[[registry]]
location = "localhost"
insecure = true
"""


def _podman_env(root: Path) -> dict[str, str]:
    """The environment of every podman process of the engine at ``root``."""
    return {
        **os.environ,
        "PATH": _search_path(),
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(root / "registries.conf"),
    }


@dataclass(eq=False)
class PodmanEngine(Engine):
    """One fog node served by Podman: ``podman system service`` answering the Docker API.

    Measured on Debian 12 with podman 4.3.1, conmon 2.1.6 and runc 1.1.5 (cgroup v1,
    cgroupfs, overlay on ext4), where it differs from dockerd:

    * The service is only an API: each container is watched by its own ``conmon``, and
      containers outlive the service. ``stop`` and ``kill`` therefore end the service *and*
      every conmon and container process of this engine (a host going down); nothing restarts
      ``unless-stopped`` containers when the service starts again (systemd's
      podman-restart.service does that on a real host).
    * The Docker API's default network is a CNI bridge (``cni-podman0``, iptables chains,
      /var/lib/cni, /run/netns): host state every engine on the machine would share. Tests
      run the controller with ``container_network="none"`` on these engines
      (``EngineKind.container_network``), which gives what dockerd's ``--bridge=none``
      default gives: a network namespace with loopback only.
    * Imported images are named ``docker.io/<repository>:<tag>`` (``fog-test/busybox:latest``
      resolves to it); ``/info`` says ``Driver: overlay``; ``--storage-opt size=`` fails at
      create with HTTP 500 as on dockerd; events are named as in Podman (see
      controller/events.py).
    * One create+start takes about 0.1-0.17 s with ``network_mode="none"``.
    """

    engine_comms: ClassVar[frozenset[str]] = frozenset({"podman", "conmon"})

    @classmethod
    def in_dir(cls, name: str, base_dir: Path, *, tls: bool = False) -> Engine:
        if tls:
            raise RuntimeError("the harness serves Podman on its unix socket only")
        root = Path(base_dir).absolute() / name
        return cls(name=name, url=f"unix://{root}/podman.sock", root=root)

    @property
    def socket_path(self) -> Path:
        return self._root() / "podman.sock"

    @property
    def log_path(self) -> Path:
        return self._root() / "podman.log"

    def spawn(self) -> None:
        """Launch ``podman system service`` without waiting for it."""
        with self._lock:
            root = self._root()
            if self._proc is not None and self._proc.poll() is None:
                return
            self._reap()
            self._kill_leftovers()
            for sub in ("data", "run", "tmp", "net"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            (root / "containers.conf").write_text(_PODMAN_CONF.format(root=root))
            (root / "registries.conf").write_text(_PODMAN_REGISTRIES_CONF)
            setpriv = _which("setpriv")
            cmd = self._command(root)
            if setpriv and threading.current_thread() is threading.main_thread():
                cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]  # as in Engine._popen
            env = _podman_env(root)
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=env,
                )
            with _LIVE_LOCK:
                _LIVE_ENGINES.add(self)

    def _command(self, root: Path) -> list[str]:
        podman = _which("podman")
        if podman is None:
            raise RuntimeError("podman not found; call ensure_docker_installed(podman=True)")
        return [
            podman,
            "--root",
            str(root / "data"),
            "--runroot",
            str(root / "run"),
            "--storage-driver",
            "overlay",
            "system",
            "service",
            "--time=0",
            self.url,
        ]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the podman CLI on this engine's storage (``healthcheck run NAME``, say: without
        systemd nothing runs Podman's healthchecks, so a test runs them)."""
        root = self._root()
        return subprocess.run(
            [*self._command(root)[:7], *args],
            env=_podman_env(root),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def wait_stopped(self) -> None:
        """Wait for the service to exit, then end its conmons and containers (which would
        run on without it)."""
        with self._lock:
            self._root()
            self._wait_exit()
            self._kill_leftovers()
            self._forget()


def _stop_live_engines() -> None:
    with _LIVE_LOCK:
        engines = list(_LIVE_ENGINES)
    for engine in engines:
        with contextlib.suppress(Exception):
            engine.stop()


atexit.register(_stop_live_engines)


# --- clusters ------------------------------------------------------------------------------


@dataclass(eq=False)
class Cluster:
    """Several engines started together; a context manager that stops what it started."""

    engines: list[Engine]
    base_dir: Path | None = None
    owns_base_dir: bool = False
    _stopped: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def start(
        cls,
        n: int = 3,
        base_dir: Path | str | None = None,
        *,
        tls: bool = False,
        podman: bool = False,
        storage_driver: str | None = None,
    ) -> Cluster:
        """Start ``n`` engines in parallel, or adopt the engines named in FOG_TEST_DOCKER_URLS.

        ``tls``: each engine also listens on a TLS-protected loopback port (``Engine.tls_url``)
        with certificates made for this run; never with external engines, whose certificates
        the harness does not hold. ``podman``: Podman services (``PodmanEngine``) instead of
        dockerd; never with external engines either. ``storage_driver``: dockerd's
        ``--storage-driver`` for every engine (e.g. ``"vfs"``); never with external engines,
        whose driver is theirs, nor with Podman.
        """
        external = _external_urls()
        if external and tls:
            raise RuntimeError(f"{URLS_ENV} is set: the harness holds no certificates for those")
        if external and podman:
            raise RuntimeError(f"{URLS_ENV} is set: the harness starts no Podman beside those")
        if external and storage_driver is not None:
            raise RuntimeError(f"{URLS_ENV} is set: the harness cannot choose their storage driver")
        if podman and storage_driver is not None:
            raise RuntimeError("storage_driver is a dockerd option; Podman engines keep overlay")
        if external:
            if len(external) < n:
                raise RuntimeError(f"{URLS_ENV} names {len(external)} engines, {n} needed")
            engines = [
                Engine(name=f"external-{i}", url=url, external=True)
                for i, url in enumerate(external[:n])
            ]
            for engine in engines:
                engine.start()  # only checks that it answers
            return cls(engines=engines)

        if base_dir is None:
            base = Path(tempfile.mkdtemp(prefix="fogtest-", dir="/tmp"))
            owns = True
        else:
            base = Path(base_dir)
            base.mkdir(parents=True, exist_ok=True)
            owns = False
        prefix = "fog-podman" if podman else "fog-tls-node" if tls else "fog-node"
        if storage_driver is not None:
            prefix = f"fog-{storage_driver}-node"
        engines: list[Engine] = [
            PodmanEngine.in_dir(f"{prefix}-{i}", base)
            if podman
            else Engine.in_dir(f"{prefix}-{i}", base, tls=tls, storage_driver=storage_driver)
            for i in range(n)
        ]
        cluster = cls(
            engines=engines,
            base_dir=base,
            owns_base_dir=owns,
        )
        atexit.register(cluster.stop_all)
        try:
            # The daemons boot in parallel; one loop polls them all. (No threads: the forking
            # thread matters for Engine._popen, and stop_all must work in atexit, where
            # Python refuses new threads.)
            for engine in cluster.engines:
                engine.spawn()
            timeout = max(e.start_timeout for e in cluster.engines)
            pending = list(cluster.engines)

            def all_ready() -> bool:
                pending[:] = [e for e in pending if not e.poll_ready()]
                return not pending

            try:
                wait_until(all_ready, timeout, f"{n} engines to answer /_ping")
            except TimeoutError as exc:
                tails = "\n".join(f"--- {e.name}:\n{e.log_tail()}" for e in pending)
                raise TimeoutError(f"{exc}; log tails:\n{tails}") from exc
        except BaseException:
            cluster.stop_all()
            raise
        return cluster

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.engines]

    def engine(self, name_or_url: str) -> Engine:
        for engine in self.engines:
            if name_or_url in (engine.name, engine.url):
                return engine
        raise KeyError(name_or_url)

    def ensure_running(self) -> None:
        """Start again every engine a test stopped or killed."""
        for engine in self.engines:
            if not engine.is_running():
                engine.start()

    def remove_containers(self, label: str | None = TEST_LABEL) -> None:
        """Force-remove the containers carrying ``label`` (every one if None) on every engine.

        Tests share the session's engines, so each cleans up after itself. Every container made
        from a harness image carries ``TEST_LABEL`` (the images set it), so the default spares
        containers of external engines that the tests did not make.
        """
        filters = {"label": label} if label is not None else None
        for engine in self.engines:
            with contextlib.closing(engine.client()) as client:
                for container in client.api.containers(all=True, quiet=True, filters=filters):
                    with contextlib.suppress(docker.errors.NotFound):
                        client.api.remove_container(container["Id"], force=True)

    def stop_all(self) -> None:
        """Stop every engine this cluster started and remove its directory; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop_all)
        ours = [e for e in self.engines if not e.external]
        errors: list[Exception] = []
        for engine in ours:
            engine.request_stop()  # all daemons shut down in parallel
        for engine in ours:
            try:
                engine.wait_stopped()
            except Exception as exc:
                errors.append(exc)
        for engine in ours:
            with contextlib.suppress(Exception):
                engine.kill()  # no-op unless stop() failed half-way
        if self.base_dir is not None:
            if self.owns_base_dir:
                _remove_tree(self.base_dir)
            else:
                for engine in ours:
                    if engine.root is not None:
                        _remove_tree(engine.root)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


# --- engine kinds --------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineKind:
    """A kind of engine the reconciler's core cases run against (tests/conftest.py starts a
    cluster of each kind once per session, when a test first asks for it).

    ``cluster_options`` go to ``Cluster.start``; ``container_network`` is what the controller
    must be told (``Settings.container_network``) for containers to stay off the host's
    networks on this kind (see ``PodmanEngine``); ``podman`` says which tools it needs.
    """

    name: str
    cluster_options: Mapping[str, Any] = field(default_factory=dict)
    container_network: str = ""
    podman: bool = False

    def start(self, n: int = 3) -> Cluster:
        """``n`` engines of this kind (installing what they need when root on Debian)."""
        ensure_docker_installed(podman=self.podman)
        return Cluster.start(n, **self.cluster_options)


DEFAULT_ENGINE_KIND = "docker-overlay2"
# One entry per kind; a new kind (docker-vfs, say) is one more line here.
ENGINE_KINDS: dict[str, EngineKind] = {
    kind.name: kind
    for kind in (
        EngineKind(DEFAULT_ENGINE_KIND),
        EngineKind(
            "podman", cluster_options={"podman": True}, container_network="none", podman=True
        ),
        # dockerd on the vfs storage driver (nested Docker, some edge boards): no copy-on-write,
        # no disk quota on ext4, so storage_gb is monitored rather than enforced.
        EngineKind("docker-vfs", cluster_options={"storage_driver": "vfs"}),
    )
}


# --- images --------------------------------------------------------------------------------


@contextlib.contextmanager
def _client_of(target: Engine | docker.DockerClient) -> Iterator[docker.DockerClient]:
    if isinstance(target, Engine):
        with contextlib.closing(target.client()) as client:
            yield client
    else:
        yield target


def _rootfs_tar(busybox: Path) -> bytes:
    """A minimal root filesystem: static busybox, its applets, /tmp, root in /etc/passwd.

    Every member has mtime 0 so the same busybox always gives the same layer digest.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for d in ("bin", "etc", "proc", "sys", "dev", "var", "run"):
            add(d, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        add("root", tarfile.DIRTYPE, 0o700)
        add("bin/busybox", tarfile.REGTYPE, 0o755, busybox.read_bytes())
        for applet in APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add(
            "etc/passwd",
            tarfile.REGTYPE,
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        add("etc/group", tarfile.REGTYPE, 0o644, b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def _image_config(client: docker.DockerClient, tag: str) -> dict[str, Any] | None:
    try:
        attrs: dict[str, Any] = client.images.get(tag).attrs
    except docker.errors.ImageNotFound:
        return None
    config: dict[str, Any] = attrs.get("Config") or {}
    return config


def build_test_image(engine_or_client: Engine | docker.DockerClient, tag: str = TEST_IMAGE) -> str:
    """Import the busybox test image (no registry needed); skipped if ``tag`` exists.

    Its default command runs until SIGTERM and then exits 0 at once. Returns the image ID.
    """
    with _client_of(engine_or_client) as client:
        if _image_config(client, tag) is None:
            busybox = find_static_busybox()
            if busybox is None:
                raise RuntimeError("no static busybox; call ensure_docker_installed() first")
            repository, _, version = tag.rpartition(":")
            if not repository or "/" in version:
                repository, version = tag, "latest"
            client.api.import_image_from_data(
                _rootfs_tar(busybox),
                repository=repository,
                tag=version,
                changes=[
                    f"CMD {json.dumps(list(DEFAULT_CMD))}",
                    "ENV PATH=/bin",
                    f"LABEL {TEST_LABEL}=1",
                ],
            )
        image_id: str = client.images.get(tag).attrs["Id"]
        return image_id


def build_image(
    engine_or_client: Engine | docker.DockerClient,
    tag: str,
    cmd: Sequence[str],
    healthcheck: Mapping[str, Any] | None = None,
) -> str:
    """A variant of the test image with another command and optional healthcheck.

    ``healthcheck`` takes the Docker SDK's keys (``test``, ``interval``, ``timeout``,
    ``retries``, ``start_period``; durations in nanoseconds) or the API's capitalised ones.
    Skipped if ``tag`` already has this command and healthcheck. Returns the image ID.
    """
    wanted_health = (
        {k: v for k, v in Healthcheck(**healthcheck).items() if v is not None}
        if healthcheck
        else None
    )
    with _client_of(engine_or_client) as client:
        existing = _image_config(client, tag)
        if (
            existing is None
            or existing.get("Cmd") != list(cmd)
            or (existing.get("Healthcheck") or None) != wanted_health
        ):
            base = build_test_image(client)
            container = client.api.create_container(base)
            try:
                conf: dict[str, Any] = {"Cmd": list(cmd), "Entrypoint": None}
                if wanted_health is not None:
                    conf["Healthcheck"] = wanted_health
                repository, _, version = tag.rpartition(":")
                if not repository or "/" in version:
                    repository, version = tag, "latest"
                client.api.commit(
                    container["Id"], repository=repository, tag=version, pause=False, conf=conf
                )
            finally:
                client.api.remove_container(container["Id"], force=True)
        image_id: str = client.images.get(tag).attrs["Id"]
        return image_id
