"""`adapters serve`: a real uvicorn server on 127.0.0.1, called over HTTP and through loradex.Client.

Records equal `adapters predict --json`; concurrent requests for different adapters share passes;
every fault fails only its own request and the server answers a good request afterwards.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

import loradex
from loradex.plugins.shapes import scene_image, single_shape_image
from loradex.registry.cli import cli
from loradex.registry.serve.metrics import histogram_mean, sample
from loradex.registry.serve.settings import ServeSettings
from loradex.registry.store.registry import Registry

from .registry_helpers import random_shelf
from .serve_helpers import ThreadServer, wait_ready

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn) is not installed")


@pytest.fixture(scope="module")
def shelf(tmp_path_factory):
    """cls, det (96 px, aliased prod), pose, x (two versions, prod on v1), broken (a blob corrupted) and a merge."""
    from loradex.registry.derive.sessions import merge_versions

    root = tmp_path_factory.mktemp("serve-shelf")
    home = random_shelf(root, [("cls", "classification", {"seed": 3}),
                               ("det", "detection", {"seed": 3, "image_size": 96}),
                               ("pose", "pose", {"seed": 4, "targets": "all"}),
                               ("x", "classification", {"seed": 5}), ("x", "classification", {"seed": 6}),
                               ("broken", "classification", {"seed": 7})])
    with Registry.open(home) as registry:
        registry.tag("det@v1", "prod")
        registry.tag("x@v1", "prod")
        merge_versions(registry, ["cls", "det", "pose"], name="shelf")
        record = registry.resolve("broken@v1")
        blob = registry.blobs.path(record.files["head.safetensors"].sha256)
        os.chmod(blob, 0o644)
        blob.write_bytes(blob.read_bytes()[:-8] + b"\0" * 8)
    images = root / "images"
    images.mkdir()
    for i in range(3):
        single_shape_image(11, i, 64, i).save(images / f"shape{i}.png")
    scene_image(5, 0, 120)[0].save(images / "scene.jpg")
    return home, images


@pytest.fixture(scope="module")
def server(shelf):
    home, _ = shelf
    settings = ServeSettings(refs=("cls",), home=str(home), max_wait_ms=30, max_body_mb=1, max_pixels=4_000_000)
    with ThreadServer(settings) as running:
        yield running


def cli_records(home, refs, *paths):
    result = CliRunner().invoke(cli, ["--home", str(home), "predict", refs, *map(str, paths), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def post(server, paths, adapters, **fields):
    files = [("images", (str(p), Path(p).read_bytes(), "application/octet-stream")) for p in paths]
    return httpx.post(f"{server.url}/v1/predict", files=files, data={"adapters": adapters, **fields},
                      headers=server.headers(), timeout=60)


def assert_close(a, b, path="record"):
    """Equal JSON, numbers within 1e-5."""
    if isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= 1e-5, f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: {len(a)} items != {len(b)}"
        for index, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{index}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def good_request_works(server, images):
    response = post(server, [images / "shape0.png"], "cls")
    assert response.status_code == 200, response.text
    assert list(response.json()["results"][0]["predictions"]) == ["cls@v1"]


def test_records_equal_adapters_predict_json_over_http_and_through_the_client(server, shelf):
    home, images = shelf
    paths = sorted(images.iterdir())
    expected = cli_records(home, "cls,det@prod,pose", *paths)
    response = post(server, paths, "cls,det@prod,pose")
    assert response.status_code == 200, response.text
    assert_close(response.json()["results"], expected)
    with loradex.Client(server.url) as client:
        results = client.predict([str(p) for p in paths], adapters=["cls", "det@prod", "pose"], batch_size=2)
        assert_close([r.to_dict() for r in results], expected)
        drawing = results[0].draw()  # the client's results draw like local ones
        assert drawing.width >= 120 and results[0]["det@v1"].task.name == "detection"
        merged = client.predict([str(p) for p in paths], adapters=["shelf"])
    assert_close([r.to_dict() for r in merged], cli_records(home, "shelf", *paths))
    assert list(merged[0].to_dict()["predictions"]) == ["shelf@v1#classification", "shelf@v1#detection",
                                                        "shelf@v1#pose"]


def test_json_base64_and_options_per_request(server, shelf):
    _, images = shelf
    data = base64.b64encode((images / "shape1.png").read_bytes()).decode()
    body = {"images": [{"name": "one.png", "data": data}, "data:image/png;base64," + data],
            "adapters": ["cls"], "options": {"top_k": 2}}
    response = httpx.post(f"{server.url}/v1/predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["image"] == "one.png" and second["image"] == "<image 1>"
    assert len(first["predictions"]["cls@v1"]["top_k"]) == 2
    assert first["predictions"] == second["predictions"]


def test_one_raw_image_with_adapters_in_the_query(server, shelf):
    _, images = shelf
    path = images / "shape2.png"
    raw = httpx.post(f"{server.url}/v1/predict", content=path.read_bytes(), timeout=60,
                     headers={"content-type": "image/png"},
                     params=[("adapters", "cls,det"), ("option", "top_k=2"), ("name", str(path))])
    assert raw.status_code == 200, raw.text
    assert_close(raw.json()["results"], post(server, [path], "cls,det", option="top_k=2").json()["results"])
    missing = httpx.post(f"{server.url}/v1/predict", content=path.read_bytes(),
                         headers={"content-type": "application/octet-stream"})
    assert missing.status_code == 400 and "name at least one adapter" in missing.json()["error"]
    no_pair = httpx.post(f"{server.url}/v1/predict", content=path.read_bytes(), timeout=60,
                         headers={"content-type": "image/png"}, params=[("adapters", "cls"), ("option", "top_k")])
    assert no_pair.status_code == 400
    assert no_pair.json()["error"] == ("option 'top_k' is not KEY=VALUE (e.g. top_k=3 or detection.min_score=0.5)")


def test_concurrent_requests_for_different_adapters_share_one_pass(server, shelf):
    _, images = shelf
    before = httpx.get(f"{server.url}/metrics").text
    refs = ["cls", "det", "pose", "cls", "det", "pose", "x@v2", "shelf"]
    barrier = threading.Barrier(len(refs))

    def one(ref):
        barrier.wait()
        return post(server, [images / "shape2.png"], ref)

    with concurrent.futures.ThreadPoolExecutor(len(refs)) as pool:
        responses = list(pool.map(one, refs))
    assert [r.status_code for r in responses] == [200] * len(refs)
    after = httpx.get(f"{server.url}/metrics").text
    passes = sample(after, "loradex_batch_images_count") - sample(before, "loradex_batch_images_count")
    assert passes < len(refs), "every request ran alone: nothing was batched"
    assert sample(after, "loradex_batch_adapters_sum") - sample(before, "loradex_batch_adapters_sum") > passes
    assert histogram_mean(after, "loradex_batch_images") > 1


def test_each_fault_fails_only_its_request_and_the_server_keeps_answering(server, shelf, tmp_path):
    _, images = shelf
    url = f"{server.url}/v1/predict"
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("1", (2500, 2000)).save(tmp_path / "bomb.png")  # 5 Mpx in a few kB: over the 4 Mpx limit
    cases = [
        (post(server, [tmp_path / "notes.png"], "cls"), 400, "notes.png: not a readable image"),
        (post(server, [tmp_path / "bomb.png"], "cls"), 400, "more than the limit of 4,000,000 (--max-pixels)"),
        (post(server, [images / "shape0.png"], "clss"), 404, "Did you mean 'cls'?"),
        (post(server, [images / "shape0.png"], "cls@v9"), 404, "cls has no version v9"),
        (post(server, [images / "shape0.png"], "cls", option="top_kk=2"), 400, "Did you mean 'top_k'?"),
        (post(server, [images / "shape0.png"], "acme/models@v1"), 403, "Hub refs are off"),
        (post(server, [images / "shape0.png"], ""), 400, "empty entry"),
        (httpx.post(url, content=b"x" * (2 * 1024 * 1024), headers={"content-type": "application/json"}),
         413, "at most 1,048,576"),
        (httpx.post(url, content=b"{", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (httpx.post(url, json={"images": ["%%%"], "adapters": ["cls"]}), 400, "not valid base64"),
        (httpx.post(url, json={"images": [], "adapters": ["cls"]}), 400, "no images"),
        (httpx.post(url, content=b"hello", headers={"content-type": "text/plain"}), 415, "multipart/form-data"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert message in error and "\n" not in error and "Traceback" not in error, error
        good_request_works(server, images)


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_read(server, shelf):
    def chunks():
        for _ in range(40):
            yield b"y" * 65536

    response = httpx.post(f"{server.url}/v1/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "--max-body-mb" in response.json()["error"]
    good_request_works(server, shelf[1])


def test_an_adapter_whose_files_fail_their_hash_fails_alone_in_its_batch(server, shelf):
    _, images = shelf
    barrier = threading.Barrier(3)

    def one(ref):
        barrier.wait()
        return post(server, [images / "shape1.png"], ref)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        broken, good, other = pool.map(one, ["broken", "cls", "pose"])
    assert broken.status_code == 500 and "head.safetensors is corrupt" in broken.json()["error"]
    assert good.status_code == 200 and other.status_code == 200
    good_request_works(server, images)


def test_adapters_route_lists_loaded_available_and_base(server):
    body = httpx.get(f"{server.url}/v1/adapters").json()
    assert body["base"]["name"] == "tiny-vit" and body["base"]["fingerprint"].startswith("sha256:")
    loaded = {a["ref"]: a for a in body["loaded"]}
    assert loaded["cls@v1"]["pinned"] is True and loaded["cls@v1"]["tasks"] == ["classification"]
    assert {a["name"] for a in body["available"]} >= {"cls", "det", "pose", "x", "shelf"}
    heads = httpx.get(f"{server.url}/v1/adapters/det@prod").json()
    assert heads["ref"] == "det@v1" and heads["heads"][0]["config"]
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert httpx.get(f"{server.url}/docs").status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert sample(metrics, "loradex_requests_total", {"route": "/v1/predict", "status": "200"}) >= 1
    for name in ("loradex_request_seconds_count", "loradex_queue_depth", "loradex_adapters_loaded",
                 "loradex_adapter_loads_total", "loradex_adapter_evictions_total"):
        assert sample(metrics, name) is not None, name


def test_an_alias_moved_under_traffic_reaches_new_requests_within_a_second(shelf):
    home, images = shelf
    settings = ServeSettings(home=str(home), max_wait_ms=5)
    with ThreadServer(settings) as running:
        stop = threading.Event()
        seen: list[tuple[float, int, str]] = []

        def traffic():
            while not stop.is_set():
                response = post(running, [images / "shape0.png"], "x@prod")
                keys = list(response.json().get("predictions", {})) if response.status_code != 200 else \
                    list(response.json()["results"][0]["predictions"])
                seen.append((time.monotonic(), response.status_code, keys[0] if keys else response.text))

        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        with Registry.open(home) as registry:  # as `adapters tag x@v2 prod` in another shell
            registry.tag("x@v2", "prod")
        moved = time.monotonic()
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join()
        with Registry.open(home) as registry:
            registry.tag("x@v1", "prod")
    assert seen and all(status == 200 for _, status, _ in seen), [s for s in seen if s[1] != 200][:3]
    assert {key for t, _, key in seen if t < moved} == {"x@v1"}
    assert {key for t, _, key in seen if t > moved + 1.0} == {"x@v2"}


def test_lru_keeps_at_most_max_adapters_and_answers_every_request_right(shelf):
    home, images = shelf
    refs = ["cls", "det", "pose", "x@v2"]
    expected = {ref: cli_records(home, ref, images / "shape1.png")[0] for ref in refs}
    settings = ServeSettings(home=str(home), max_adapters=2, max_wait_ms=5)
    with ThreadServer(settings) as running, concurrent.futures.ThreadPoolExecutor(4) as pool:
        def one(ref):
            return ref, post(running, [images / "shape1.png"], ref)

        for ref, response in pool.map(one, refs * 4):
            assert response.status_code == 200, response.text
            record = response.json()["results"][0]
            assert_close(record["predictions"], expected[ref]["predictions"])
        body = httpx.get(f"{running.url}/v1/adapters").json()
        metrics = httpx.get(f"{running.url}/metrics").text
    assert len(body["loaded"]) <= 2
    assert sample(metrics, "loradex_adapters_loaded") <= 2
    assert sample(metrics, "loradex_adapter_evictions_total") >= 2
    assert sample(metrics, "loradex_adapter_loads_total") >= 4


def test_a_full_queue_answers_503_and_a_slow_request_504(shelf):
    home, images = shelf
    settings = ServeSettings(refs=("cls",), home=str(home), max_batch=1, max_queue=2, timeout_s=1.0, max_wait_ms=0)
    with ThreadServer(settings) as running:
        release = threading.Event()
        running.state.batcher._thread.submit(release.wait)  # the model thread is busy until released
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            waiting = [pool.submit(post, running, [images / "shape0.png"], "cls") for _ in range(3)]
            deadline = time.monotonic() + 10
            while running.state.batcher.depth < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            full = post(running, [images / "shape0.png"], "cls")
            late = [f.result() for f in waiting]
        release.set()
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert "queue is full" in full.json()["error"]
        assert [r.status_code for r in late] == [504] * 3 and "--timeout" in late[0].json()["error"]
        good_request_works(running, images)


def test_a_token_guards_every_route_but_healthz_and_never_shows(shelf, capfd):
    home, images = shelf
    token = "s3cret-token-value"
    with ThreadServer(ServeSettings(refs=("cls",), home=str(home), token=token)) as running:
        url = running.url
        assert httpx.get(f"{url}/healthz").status_code == 200
        for path in ("/v1/adapters", "/metrics", "/readyz", "/docs", "/openapi.json"):
            assert httpx.get(url + path).status_code == 401, path
        wrong = httpx.get(f"{url}/v1/adapters", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert httpx.post(f"{url}/v1/predict", json={"images": [], "adapters": ["cls"]}).status_code == 401
        answers = [post(running, [images / "shape0.png"], "cls"), httpx.get(f"{url}/metrics", headers=running.headers()),
                   httpx.get(f"{url}/v1/adapters", headers=running.headers())]
        assert [a.status_code for a in answers] == [200, 200, 200]
        with loradex.Client(url, token=token) as client:
            assert client.predict(str(images / "shape0.png"), adapters="cls")[0]["cls"]["label"]
        with loradex.Client(url) as client, pytest.raises(loradex.ServerError, match="401"):
            client.predict(str(images / "shape0.png"), adapters="cls")
    captured = capfd.readouterr()
    assert all(token not in a.text for a in answers) and token not in captured.out + captured.err


def test_serve_cli_refuses_bad_settings_in_one_line(shelf):
    home, _ = shelf
    for args, message in ((["serve", "nosuch"], "no adapter named 'nosuch'"),
                          (["serve", "cls", "--replicas", "2"], "--replicas needs --ray"),
                          (["serve", "cls,det", "--max-adapters", "1"], "do not fit --max-adapters 1")):
        result = CliRunner().invoke(cli, ["--home", str(home), *args, "--port", str(free_port())])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert result.stderr.strip().splitlines()[-1].startswith("Error: ") and message in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_drains_requests_in_flight_then_exits(shelf, tmp_path):
    home, images = shelf
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "loradex.registry.cli", "--home", str(home), "serve",
                                "cls,det,pose", "--port", str(port), "--max-batch", "4"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url)
        paths = sorted(images.iterdir()) * 4

        def one(ref):
            return httpx.post(f"{url}/v1/predict", timeout=60, data={"adapters": ref},
                              files=[("images", (str(p), p.read_bytes())) for p in paths])

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(one, ref) for ref in ["cls,det,pose"] * 6]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # SIGTERM once every request is in (queued, running or done)
                metrics = httpx.get(f"{url}/metrics").text
                arrived = (sample(metrics, "loradex_queue_depth") or 0) + (sample(metrics, "loradex_images_total") or 0)
                if arrived >= 6 * len(paths):
                    break
                time.sleep(0.005)
            assert not all(f.done() for f in futures), "every request was answered before SIGTERM: nothing in flight"
            process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [a.status_code for a in answers] == [200] * 6
        assert all(len(a.json()["results"]) == len(paths) for a in answers)
        # uvicorn re-raises the signal once it has drained, so a supervisor sees why it stopped
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
        output = (tmp_path / "serve.log").read_text()
        assert "Traceback" not in output and "Finished server process" in output, output[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        log.close()


def test_allow_hub_pulls_a_hub_ref_once_and_serves_it(shelf, tmp_path, monkeypatch):
    """With --allow-hub a request may name org/repo@rev: pulled from a real Hub-compatible server, checked, served."""
    from .test_hub import ALICE, HubServer

    import huggingface_hub
    import huggingface_hub.constants as constants

    home, images = shelf
    with HubServer(tmp_path / "hub", tokens={ALICE: "alice"}) as hub_server:
        for name, value in (("HF_HUB_OFFLINE", False), ("HF_HUB_DISABLE_XET", True), ("ENDPOINT", hub_server.endpoint),
                            ("HUGGINGFACE_CO_URL_TEMPLATE",
                             hub_server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
                            ("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))):
            monkeypatch.setattr(constants, name, value)
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub_server.endpoint)
        monkeypatch.setenv("HF_TOKEN", ALICE)
        pushed = CliRunner().invoke(cli, ["--home", str(home), "push", "pose@v1", "--repo", "alice/pose"])
        assert pushed.exit_code == 0, pushed.output
        serving_home = tmp_path / "serving"
        with Registry.open(home) as source, Registry.open(serving_home) as target:  # a server without pose
            target.put(source.materialize("cls@v1"), name="cls")
        with ThreadServer(ServeSettings(refs=("cls",), home=str(serving_home), allow_hub=True)) as running:
            answers = [post(running, [images / "shape0.png"], "cls,alice/pose@v1") for _ in range(2)]
            assert [a.status_code for a in answers] == [200, 200], answers[0].text
            assert list(answers[0].json()["results"][0]["predictions"]) == ["cls@v1", "pose@v1"]
            assert httpx.get(f"{running.url}/v1/adapters").json()["loads"]["pose@v1"] == 1
            missing = post(running, [images / "shape0.png"], "alice/nothing@v1")
            assert missing.status_code == 404 and "repository not found" in missing.json()["error"] and "\n" not in missing.json()["error"]


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_port_in_use_or_a_host_that_does_not_resolve_is_one_line_naming_it(shelf, command):
    """Issue 22.15 (and the same for serve): the demo blamed the port for an unresolvable host."""
    home, _ = shelf
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = CliRunner().invoke(cli, ["--home", str(home), command, "cls", "--port", str(port)])
    assert busy.exit_code != 0 and "Traceback" not in busy.output
    assert f"--port {port} on 127.0.0.1 cannot be used" in busy.stderr.strip().splitlines()[-1]
    unknown = CliRunner().invoke(cli, ["--home", str(home), command, "cls", "--host", "no-such-host.invalid",
                                       "--port", str(free_port())])
    assert unknown.exit_code != 0 and "--host 'no-such-host.invalid' cannot be resolved" in unknown.stderr


def test_max_wait_ms_holds_a_pass_open_for_requests_that_arrive_within_it(shelf):
    """--max-wait-ms: the first image waits that long for others (a lone request pays it; none pays it at 0)."""
    home, images = shelf
    lone = {}
    for wait_ms in (0, 400):
        with ThreadServer(ServeSettings(refs=("cls",), home=str(home), max_batch=4, max_wait_ms=wait_ms)) as running:
            post(running, [images / "shape0.png"], "cls")  # warm
            started = time.monotonic()
            assert post(running, [images / "shape0.png"], "cls").status_code == 200
            lone[wait_ms] = time.monotonic() - started
            if wait_ms:
                before = sample(httpx.get(f"{running.url}/metrics").text, "loradex_batch_images_count")
                barrier = threading.Barrier(3)

                def one(ref):
                    barrier.wait()
                    return post(running, [images / "shape1.png"], ref)

                with concurrent.futures.ThreadPoolExecutor(3) as pool:
                    assert [r.status_code for r in pool.map(one, ["cls", "det", "pose"])] == [200] * 3
                after = sample(httpx.get(f"{running.url}/metrics").text, "loradex_batch_images_count")
                assert after - before == 1  # three requests for three adapters, gathered into one pass
    assert lone[400] >= 0.4 > lone[0]
