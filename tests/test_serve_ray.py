"""The same app on a local Ray cluster: 2 replicas at 0.5 CPU each, one cluster for the module.

Same records as the embedded server; an adapter is loaded at most once per replica under
repeated traffic; a replica killed under load is replaced and the next requests succeed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import time

import httpx
import pytest
from click.testing import CliRunner

from loradex.plugins.shapes import single_shape_image
from loradex.registry.cli import cli
from loradex.registry.serve.settings import ServeSettings

from .registry_helpers import random_shelf
from .serve_helpers import ThreadServer

ray = pytest.importorskip("ray", reason="the ray extra (ray[serve]) is not installed")
serve = pytest.importorskip("ray.serve", reason="the ray extra (ray[serve]) is not installed")

REPLICAS = 2
REFS = ["cls", "det", "pose", "cls2"]


@pytest.fixture(scope="module")
def shelf(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-shelf")
    home = random_shelf(root, [("cls", "classification", {"seed": 3}),
                               ("det", "detection", {"seed": 3, "image_size": 96}),
                               ("pose", "pose", {"seed": 4}), ("cls2", "classification", {"seed": 8})])
    images = root / "images"
    images.mkdir()
    for i in range(3):
        single_shape_image(11, i, 64, i).save(images / f"shape{i}.png")
    return home, images


@pytest.fixture(scope="module")
def cluster(shelf):
    """Ray on this machine (2 CPUs), Serve on a free loopback port, the app deployed with 2 replicas."""
    from loradex.registry.serve.ray_app import DEPLOYMENT, build

    home, _ = shelf
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "LORADEX_THREADS": "1"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServeSettings(refs=("cls",), home=str(home), max_wait_ms=10)
        serve.run(build(settings, replicas=REPLICAS, replica_cpus=0.5), name=DEPLOYMENT, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 300)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def wait_for(check, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout_s} s")


def predict(url, images, refs):
    files = [("images", (str(p), p.read_bytes())) for p in sorted(images.iterdir())]
    return httpx.post(f"{url}/v1/predict", files=files, data={"adapters": refs}, timeout=120)


def replicas_seen(url, tries=40):
    """{pid: /v1/adapters body} of the replicas Ray routed these requests to."""
    seen = {}
    for _ in range(tries):
        body = httpx.get(f"{url}/v1/adapters", timeout=30).json()
        seen[body["replica"]["pid"]] = body
        if len(seen) == REPLICAS:
            break
    return seen


def test_ray_replicas_give_the_records_the_embedded_server_gives(cluster, shelf):
    home, images = shelf
    with ThreadServer(ServeSettings(refs=("cls",), home=str(home))) as embedded:
        expected = predict(embedded.url, images, "cls,det,pose").json()["results"]
    for _ in range(4):  # whichever replica answers
        response = predict(cluster, images, "cls,det,pose")
        assert response.status_code == 200, response.text
        assert json.dumps(response.json()["results"], sort_keys=True) == json.dumps(expected, sort_keys=True) or \
            all(abs(a - b) < 1e-5 for a, b in zip(_numbers(response.json()["results"]), _numbers(expected)))


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, float):
        yield value


def test_an_adapter_loads_at_most_once_per_replica_under_repeated_traffic(cluster, shelf):
    _, images = shelf
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda ref: predict(cluster, images, ref), REFS * 6))
    assert [a.status_code for a in answers] == [200] * len(answers)
    seen = replicas_seen(cluster)
    for ref in ["cls@v1", "det@v1", "pose@v1", "cls2@v1"]:
        loads = sum(body["loads"].get(ref, 0) for body in seen.values())
        assert 1 <= loads <= REPLICAS, (ref, {pid: body["loads"] for pid, body in seen.items()})


def test_a_replica_killed_under_load_is_replaced_and_requests_succeed(cluster, shelf):
    _, images = shelf
    victim = next(iter(replicas_seen(cluster)))
    os.kill(victim, signal.SIGKILL)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # load while the replica is gone and replaced
        list(pool.map(lambda ref: predict(cluster, images, ref), REFS * 2))

    def replaced():
        pids = set(replicas_seen(cluster, tries=10))
        return victim not in pids and len(pids) == REPLICAS

    wait_for(replaced, 300)
    answers = [predict(cluster, images, ref) for ref in REFS * 2]
    assert [a.status_code for a in answers] == [200] * len(answers)


def test_serve_ray_flag_is_in_the_cli():
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert "--ray" in result.output and "--replicas" in result.output
