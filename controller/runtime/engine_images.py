"""Image pulls on a node: with the deployment's registry credential, in the registry's words.

A pull that fails is one of three answers an operator acts on differently (unauthorized,
not found, unreachable: `engine_errors.pull_error`), each with the engine's own words.
dockerd answers most failures with an HTTP error, Podman with 200 and the error inside the
progress stream (`podman.pull_failure`), so both are read.

Pull policy of the rollout's pre-pull (`pull`), as Kubernetes' IfNotPresent: an image named by
a tag other than `latest`, or by digest, that the node already holds is not pulled again (a
tag is taken to name one image: a registry round trip per node per rollout saved); `latest`
and an untagged name are always pulled, since they are expected to move. A create whose image
is missing pulls it in any case (`DockerRuntime._create`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import docker.errors
import structlog
from docker.utils import parse_repository_tag

from controller.model import NodeRecord
from controller.runspec import RegistryAuth
from controller.runtime.engine_calls import EngineCalls
from controller.runtime.engine_errors import engine_message, pull_error, translate
from controller.runtime.podman import pull_failure

log = structlog.get_logger("controller.runtime.docker")


def auth_config(auth: RegistryAuth) -> dict[str, str]:
    """docker-py's `auth_config` (sent to the engine in a header, never logged)."""
    return {"username": auth.username, "password": auth.password, "serveraddress": auth.registry}


def moving_tag(image: str) -> bool:
    """PURE: whether `image` names a tag that is expected to move (`latest`, or none)."""
    _, tag = parse_repository_tag(image)
    return tag is None or tag == "latest"


class ImageCalls(EngineCalls):
    """Pulls, for the runtime port (`pull`) and for a create whose image is missing."""

    async def pull(self, node: NodeRecord, image: str, auth: RegistryAuth | None) -> None:
        if not moving_tag(image) and await self._has_image(node, image):
            log.debug("image_present", node=node.name, image=image)
            return
        await self._pull(node, image, auth)

    async def _has_image(self, node: NodeRecord, image: str) -> bool:
        try:
            await self._call(node, "inspect image", self._client(node).inspect_image, image)
        except docker.errors.NotFound:
            return False
        return True

    async def _pull(self, node: NodeRecord, image: str, auth: RegistryAuth | None) -> None:
        repository, tag = parse_repository_tag(image)
        log.info("image_pull", node=node.name, image=image, with_credential=auth is not None)
        options: dict[str, Any] = {"tag": tag or "latest"}
        if auth is not None:
            options["auth_config"] = auth_config(auth)
        timeout = self._settings.pull_timeout_seconds
        try:
            output = await asyncio.wait_for(
                self._raw(node, self._client(node).pull, repository, **options), timeout=timeout
            )
        except TimeoutError as exc:
            raise pull_error(
                image, f"timed out after {timeout:g}s", with_credential=auth is not None
            ) from exc
        except docker.errors.APIError as exc:
            raise pull_error(
                image,
                engine_message(exc),
                with_credential=auth is not None,
                status=exc.status_code,
            ) from exc
        except Exception as exc:
            # The engine itself did not answer (not the registry): worth another try.
            raise translate(exc, f"image pull {image}", self._certs(node)) from exc
        failure = pull_failure(output)
        if failure is not None:
            raise pull_error(image, failure, with_credential=auth is not None)
        log.info("image_pulled", node=node.name, image=image)
