"""``python -m bench.disk_usage``: what the storage monitor's one call per node costs the
engine, on real private engines (overlay2 and vfs on this machine's filesystem).

The controller side of a pass is measured on hollow nodes (`python -m bench scale --scale
dense`); this is the other side: `docker ps --size` (the API's `containers?size=1`, what
`DockerRuntime.disk_usage` calls) makes the engine walk each container's writable layer.
Per driver, N running containers of the test image each with a few MiB written, then the
call timed (median of `--repeats`) beside a plain listing of the same containers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import docker

from controller.model import LABEL_MANAGED_BY, MANAGED_BY_VALUE
from tests.harness.engines import (
    API_VERSION,
    Cluster,
    build_image,
    build_test_image,
    ensure_docker_installed,
)

FILLER = "fog-bench/filler:1"


def measure(driver: str, containers: int, repeats: int) -> dict[str, float]:
    with Cluster.start(1, storage_driver=driver) as cluster:
        engine = cluster.engines[0]
        build_test_image(engine)
        build_image(
            engine,
            FILLER,
            [
                "sh",
                "-c",
                "dd if=/dev/zero of=/fill bs=1048576 count=4 2>/dev/null; exec sleep 3600",
            ],
        )
        api = docker.APIClient(base_url=engine.url, version=API_VERSION, timeout=600)
        labels = {LABEL_MANAGED_BY: MANAGED_BY_VALUE}
        filters = {"label": f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"}

        def one(i: int) -> None:
            c = api.create_container(
                FILLER,
                name=f"bench-{i}",
                labels=labels,
                host_config=api.create_host_config(network_mode="none"),
            )
            api.start(c["Id"])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(containers)))
        time.sleep(2.0)  # every dd done
        sized, plain = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            found = api.containers(all=False, size=True, filters=filters)
            sized.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            api.containers(all=False, filters=filters)
            plain.append(time.perf_counter() - t0)
        assert len(found) == containers, len(found)
        written = statistics.median(int(c.get("SizeRw") or 0) for c in found)
        api.close()
        return {
            "containers": containers,
            "size_list_median_s": round(statistics.median(sized), 4),
            "plain_list_median_s": round(statistics.median(plain), 4),
            "median_size_rw_mib": round(written / 1024**2, 2),
        }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.disk_usage")
    p.add_argument("--containers", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--drivers", default="overlay2,vfs")
    args = p.parse_args(argv)
    ensure_docker_installed()
    for driver in args.drivers.split(","):
        print(driver, measure(driver, args.containers, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
