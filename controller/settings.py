"""One frozen Settings object, read from FOG_* environment variables once at start.

Nothing else in the daemon reads the environment: the CLI builds Settings and passes it down.
Every variable is listed in README.md and deploy/fog-controller.env.example.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# Per node, <dir>/<node name>/{ca,cert,key}.pem: Docker's DOCKER_CERT_PATH layout.
DEFAULT_ENGINE_CERTS_DIR = "/etc/fog-controller/engines"
# Loopback only: prometheus_client's own server would bind every address.
DEFAULT_METRICS_ADDR = "127.0.0.1:9464"
# Settings whose empty value means "off" rather than "the default".
_EMPTY_MEANS_OFF = frozenset({"metrics_addr"})


def default_state_dir(env: Mapping[str, str]) -> Path:
    """systemd's StateDirectory when run as a service, else the XDG state directory."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "fog-controller"


class SettingsError(ValueError):
    """A FOG_* variable that cannot be used; the message names it and the bad value."""


@dataclass(frozen=True, slots=True)
class Settings:
    # Names map to FOG_<NAME upper-cased>; the comment is the unit.
    database_url: str
    resync_seconds: float = 5.0
    stop_timeout_seconds: int = 10
    progress_deadline_seconds: float = 600.0
    replica_burst: int = 500  # most unplaced pending rows per deployment
    keep_terminal_replicas: int = 10  # stopped/failed rows kept per deployment
    workers: int = 64  # deployments reconciled at once (a coroutine each; see db_pool_size)
    node_concurrency: int = 8  # Docker calls in flight per node
    docker_timeout_seconds: float = 30.0
    pull_timeout_seconds: float = 300.0
    crash_backoff_initial_seconds: float = 10.0
    crash_backoff_max_seconds: float = 300.0
    node_heartbeat_seconds: float = 5.0
    node_grace_seconds: float = 40.0
    exit_grace_seconds: float = 5.0  # an exited container counts once its node outlives it
    max_surge: float = 0.25  # rolling update: extra replicas, as a fraction of the target
    max_unavailable: float = 0.25  # rolling update: replicas that may be unavailable
    min_ready_seconds: float = 5.0  # in a rollout, a new replica counts once up this long
    unhealthy_seconds: float = 30.0  # unhealthy this long: the replica is replaced
    # How often containers on nodes that cannot cap disk are measured (0: never).
    storage_check_seconds: float = 60.0
    eviction_seconds: float = 300.0  # after the grace, before a not-ready node's replicas move
    eviction_interval_seconds: float = 10.0  # at most one node evicted per interval
    disruption_threshold: float = 0.55  # above this fraction of nodes down, evict nothing
    shutdown_grace_seconds: float = 10.0
    container_network: str = ""  # empty: the engine's default network
    pids_limit: int = 1024  # per container
    register_local_node: bool = True
    auto_migrate: bool = True  # upgrade the schema to head at start
    leader_retry_seconds: float = 2.0  # how often a standby tries to take the lead
    local_docker_host: str = DEFAULT_DOCKER_HOST
    engine_certs_dir: str = DEFAULT_ENGINE_CERTS_DIR  # TLS files of node N in <dir>/N/
    # Plain TCP to engines without certificates: an unauthenticated Docker API is root there.
    engine_allow_plaintext: bool = False
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    # Registry passwords are encrypted under the key in this file (made 0600 on first use);
    # empty: <state dir>/secret.key, beside the embedded database (controller/secrets.py).
    secret_key_file: str = ""
    # Directories a deployment's host-path volume may be under (comma-separated); empty:
    # none, so only named volumes may be mounted.
    allowed_host_paths: tuple[str, ...] = ()
    # Rebalancing (controller/rebalance.py): move replicas to a node that joins or returns so
    # the spread heals; at most this many moves in flight at once, fleet-wide, and after a
    # deployment's rebalance ends none for it again until the cool-down has passed.
    rebalance: bool = True
    rebalance_max_moves: int = 4
    rebalance_cooldown_seconds: float = 60.0
    metrics_addr: str = DEFAULT_METRICS_ADDR  # host:port of /metrics, /livez, /readyz; "": off

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"FOG_{f.name.upper()}"
            if key not in env or (env[key] == "" and f.name not in _EMPTY_MEANS_OFF):
                continue
            values[f.name] = _parse(key, env[key], f.type)
        if "database_url" not in values:
            db = default_state_dir(env) / "fog.db"
            values["database_url"] = f"sqlite+aiosqlite:///{db}"
        if not values.get("secret_key_file"):
            values["secret_key_file"] = str(default_state_dir(env) / "secret.key")
        if "local_docker_host" not in values and env.get("DOCKER_HOST"):
            values["local_docker_host"] = env["DOCKER_HOST"]
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = ("resync_seconds", "workers", "node_concurrency", "docker_timeout_seconds")
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"FOG_{name.upper()} must be > 0, got {getattr(self, name)}")
        if self.stop_timeout_seconds < 0 or self.keep_terminal_replicas < 0:
            raise SettingsError("FOG_STOP_TIMEOUT_SECONDS and FOG_KEEP_TERMINAL_REPLICAS >= 0")
        if self.storage_check_seconds < 0:
            raise SettingsError(
                f"FOG_STORAGE_CHECK_SECONDS must be >= 0, got {self.storage_check_seconds}"
            )
        if self.rebalance_max_moves < 1 or self.rebalance_cooldown_seconds < 0:
            raise SettingsError(
                "FOG_REBALANCE_MAX_MOVES must be >= 1 and FOG_REBALANCE_COOLDOWN_SECONDS >= 0"
            )
        if self.replica_burst < 1:
            raise SettingsError(f"FOG_REPLICA_BURST must be >= 1, got {self.replica_burst}")
        if self.log_format not in ("auto", "json", "console"):
            raise SettingsError(f"FOG_LOG_FORMAT must be auto, json or console: {self.log_format}")
        if self.metrics_addr:
            split_host_port("FOG_METRICS_ADDR", self.metrics_addr)
        for allowed in self.allowed_host_paths:
            if not allowed.startswith("/"):
                raise SettingsError(f"FOG_ALLOWED_HOST_PATHS: not an absolute path: {allowed!r}")
        if not Path(self.engine_certs_dir).is_absolute():
            # A relative one would depend on the working directory, which systemd sets to /.
            raise SettingsError(
                f"FOG_ENGINE_CERTS_DIR must be an absolute path: {self.engine_certs_dir!r}"
            )

    @property
    def db_pool_size(self) -> int:
        """Database connections kept open, whatever FOG_WORKERS is: workers reach the
        database only through the group-committed loads, transitions and writes (one
        connection each, controller/coalesce.py), and beside them run the usage read, the
        resync, heartbeat and lease loops and evictions. The hollow-node benchmark measured
        at most 6 in use at once while placing 50,000 replicas with 1,024 workers."""
        return 10

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """FOG_METRICS_ADDR as (host, port), or None when it is empty (listener off)."""
        if not self.metrics_addr:
            return None
        return split_host_port("FOG_METRICS_ADDR", self.metrics_addr)


def split_host_port(key: str, addr: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` -> (host, port); the host must be given (0.0.0.0 for all)."""
    host, sep, port = addr.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{key} must be host:port (e.g. {DEFAULT_METRICS_ADDR}): {addr!r}")
    return host, int(port)


def _parse(key: str, raw: str, annotation: Any) -> Any:
    kind = str(annotation)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "tuple[str, ...]":
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{key}: cannot read {raw!r} as {kind}") from None
    return raw
