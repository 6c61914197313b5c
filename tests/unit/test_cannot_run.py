"""A deployment the controller cannot run as written is `failed` with the reason, decided
before anything is placed; one it can run gets its spec and its decrypted pull secret on the
create, and its own stop grace. The in-memory store, hollow nodes, one clock."""

from __future__ import annotations

from cryptography.fernet import Fernet
from structlog.testing import capture_logs

from controller.credentials import Credentials
from controller.model import DeploymentStatus, ReplicaStatus, container_name
from controller.runspec import RunSpec, VolumeSpec
from controller.runtime.hollow import hollow_url
from controller.secrets import SecretBox
from tests.unit.fog import Fog, fog

FORBIDDEN = RunSpec(volumes=(VolumeSpec("/cfg", host_path="/srv/fog/cfg", read_only=True),))
PRIVATE = RunSpec(image_pull_secret="company-registry", env=(("SITE", "north"),))
PASSWORD = "s3cret-Pa55"


def with_key(f: Fog) -> SecretBox:
    """The fog's controller decrypts with a key of its own (no key file: no I/O)."""
    box = SecretBox(Fernet.generate_key())
    f.reconciler.credentials = Credentials(f.store, "", box=box)
    return box


async def test_a_host_path_outside_the_allowed_ones_fails_before_anything_is_placed() -> None:
    f = await fog()
    d = f.new(2, run=FORBIDDEN)
    await f.reconcile(d)
    assert f.status(d) is DeploymentStatus.FAILED
    assert f.reasons(d)[-1] == (
        "0/2 replicas running; cannot run: host path /srv/fog/cfg is not under "
        "FOG_ALLOWED_HOST_PATHS (none allowed)"
    )
    assert f.runtime.calls["ensure"] == 0
    assert not f.store.rows(d.id)  # not even a pending row
    # Looked at again (a resync pass), nothing more is written.
    history = len(f.store.history)
    await f.reconcile(d)
    assert len(f.store.history) == history


async def test_a_host_path_under_an_allowed_directory_runs() -> None:
    f = await fog(allowed_host_paths=("/srv/fog",))
    d = f.new(2, run=FORBIDDEN)
    await f.reconcile(d)
    assert f.status(d) is DeploymentStatus.RUNNING
    assert f.running(d) == 2


async def test_a_pull_secret_the_user_has_no_credential_for_fails() -> None:
    f = await fog()
    with_key(f)
    d = f.new(1, run=PRIVATE)
    await f.reconcile(d)
    assert f.status(d) is DeploymentStatus.FAILED
    assert (
        "cannot run: image pull secret 'company-registry': the deployment's user has no "
        in (f.reasons(d)[-1])
    )
    assert f.runtime.calls["ensure"] == 0


async def test_a_credential_that_does_not_decrypt_fails_in_the_key_files_words() -> None:
    f = await fog()
    with_key(f)
    other = SecretBox(Fernet.generate_key())  # fogctl ran with another key file
    d = f.new(1, run=PRIVATE)
    f.store.credentials[(d.user_id, "company-registry")] = (
        "127.0.0.1:5000",
        "fog",
        other.encrypt(PASSWORD),
    )
    await f.reconcile(d)
    assert f.status(d) is DeploymentStatus.FAILED
    assert f.reasons(d)[-1].endswith(
        "cannot run: image pull secret 'company-registry': a stored credential does not open "
        "with this key (FOG_SECRET_KEY_FILE is not the key it was added with): add the "
        "credential again"
    )
    assert f.runtime.calls["ensure"] == 0


async def test_the_create_gets_the_spec_and_the_decrypted_credential_never_logged() -> None:
    f = await fog()
    box = with_key(f)
    d = f.new(1, run=PRIVATE)
    f.store.credentials[(d.user_id, "company-registry")] = (
        "127.0.0.1:5000",
        "fog",
        box.encrypt(PASSWORD),
    )
    with capture_logs() as logs:
        await f.reconcile(d)
    assert f.status(d) is DeploymentStatus.RUNNING
    [row] = f.store.rows(d.id, ReplicaStatus.RUNNING)
    spec = f.runtime.spec_of(hollow_url("n1"), container_name(row.id))
    assert spec.run == PRIVATE
    assert spec.auth is not None
    assert (spec.auth.registry, spec.auth.username, spec.auth.password) == (
        "127.0.0.1:5000",
        "fog",
        PASSWORD,
    )
    assert PASSWORD not in repr(logs)
    assert PASSWORD not in repr(spec)


async def test_an_edit_it_cannot_run_keeps_every_old_replica_serving() -> None:
    f = await fog("n1", "n2", "n3")
    d = f.new(4)
    await f.reconcile(d)
    assert f.running(d) == 4
    f.clock.advance(10)
    d = f.edit(d, run=FORBIDDEN)
    await f.reconcile(d)
    assert f.running(d) == 4
    assert f.runtime.calls["stop"] == 0
    assert f.status(d) is DeploymentStatus.FAILED
    assert f.reasons(d)[-1].startswith(
        "4/4 replicas running; rollout halted: cannot run: host path"
    )
    # The operator allows nothing new, but scaling down still works.
    f.clock.advance(1)
    d = f.edit(d, target_replicas=2)
    await f.reconcile(d)
    assert f.running(d) == 2


async def test_stops_use_the_deployments_grace_else_the_controllers() -> None:
    f = await fog(stop_timeout_seconds=7)
    graceful = f.new(2, run=RunSpec(stop_grace_seconds=30))
    await f.reconcile(graceful)
    f.clock.advance(1)
    f.edit(graceful, target_replicas=0)
    await f.reconcile(graceful)
    assert f.runtime.stop_timeouts == {30: 2}

    plain = f.new(1, id=f.node_id("another"), name="plain")
    await f.reconcile(plain)
    f.clock.advance(1)
    f.edit(plain, target_replicas=0)
    await f.reconcile(plain)
    assert f.runtime.stop_timeouts == {30: 2, 7: 1}
