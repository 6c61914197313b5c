"""A deployment's image pull secret, looked up and decrypted just before it is needed.

The reconciler asks for it only when a reconcile will start or pre-pull something, so a
converged deployment costs no lookup. The password stays in a `RegistryAuth` (whose repr hides
it) between here and the engine call, and is never logged. The key file is read once and its
`SecretBox` kept; a key file that cannot be read is not remembered, so fixing it needs no
restart. What goes wrong is returned as the deployment's problem, in the key file's words.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from controller import runnable
from controller.model import Deployment
from controller.ports import ReconcileStore
from controller.runspec import RegistryAuth
from controller.secrets import SecretBox, SecretKeyError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PullSecret:
    """The credential to pull with (None: pull anonymously), or why there is none to use."""

    auth: RegistryAuth | None = None
    problem: str | None = None


ANONYMOUS = PullSecret()


class Credentials:
    """Decrypts the registry credentials of deployments' users with one key file."""

    def __init__(self, store: ReconcileStore, key_file: str, box: SecretBox | None = None) -> None:
        self._store = store
        self._key_file = key_file
        self._box = box  # read from `key_file` at first use, unless given

    def _secret_box(self) -> SecretBox:
        if self._box is None:
            if not self._key_file:
                raise SecretKeyError("FOG_SECRET_KEY_FILE is not set")
            # Never made here: a key the controller made could open no stored credential.
            self._box = SecretBox.from_file(self._key_file, create=False)
        return self._box

    async def pull_secret(self, d: Deployment) -> PullSecret:
        """The deployment's credential, decrypted; anonymous when it names none."""
        name = d.run.image_pull_secret
        if name is None:
            return ANONYMOUS
        found = await self._store.registry_credential(d.user_id, name)
        if found is None:
            return PullSecret(problem=runnable.no_credential(name))
        registry, username, token = found
        try:
            password = self._secret_box().decrypt(token)
        except SecretKeyError as exc:
            log.warning("registry_credential_unreadable", secret=name, reason=str(exc))
            return PullSecret(problem=runnable.unreadable_credential(name, str(exc)))
        return PullSecret(auth=RegistryAuth(registry, username, password))
