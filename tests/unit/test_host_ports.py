"""The node ports held by containers that are not ours, read from one engine listing (the
shape dockerd 20.10 and Podman 4.3 list): a replica's host port must not collide with them,
and our own replicas' ports are the scheduler's to count, not these."""

from __future__ import annotations

from typing import Any

from controller.model import LABEL_MANAGED_BY, MANAGED_BY_VALUE
from controller.runtime.container_status import foreign_host_ports


def item(ports: list[dict[str, Any]], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"Id": "c", "Labels": labels, "Ports": ports, "State": "running"}


def test_published_ports_of_others_count_and_ours_do_not() -> None:
    listing = [
        item(
            [
                {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                {"IP": "127.0.0.1", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"},
            ],
            {"team": "other"},
        ),
        item(
            [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 18080, "Type": "tcp"}],
            {LABEL_MANAGED_BY: MANAGED_BY_VALUE},
        ),
    ]
    assert foreign_host_ports(listing) == {(8080, "tcp"), (5353, "udp")}


def test_exposed_but_unpublished_ports_and_bare_containers_hold_nothing() -> None:
    listing = [
        item([{"PrivatePort": 80, "Type": "tcp"}]),
        {"Id": "bare", "Labels": None, "Ports": None},
        {"Id": "older"},
    ]
    assert foreign_host_ports(listing) == frozenset()


def test_a_label_that_only_looks_like_ours_does_not_hide_a_port() -> None:
    listing = [
        item(
            [{"PrivatePort": 80, "PublicPort": 9000, "Type": "tcp"}],
            {LABEL_MANAGED_BY: "someone-else"},
        )
    ]
    assert foreign_host_ports(listing) == {(9000, "tcp")}
