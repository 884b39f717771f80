"""`adapters serve` under closed-loop load on 127.0.0.1, against itself unbatched and against offline predict.

    uv run python bench/serve.py                  # every scenario below (about 9 minutes on 2 cores)
    uv run python bench/serve.py --only tiny       # one scenario: tiny, vit-base, flat, lru, alias

For each scenario, K adapters (random LoRA r=16 on q, v and a 5-class head) are stored in a
fresh registry and C clients each send ONE image per request, round-robin over the adapters,
waiting for each answer before sending the next (closed loop). Side by side in one run, in
alternating rounds (each round starting with another; medians compared, since this machine's
speed drifts by 20% and more between minutes), with both servers up at once:

  (a) the server as shipped: requests for the same or different adapters batched into one pass
      (``--max-batch`` = C, ``--max-wait-ms`` 5);
  (b) the same server with ``--max-batch 1``: one request per pass;
  (c) offline: ``Predictor.run`` — the pipeline ``loradex.load(...).predict()`` runs — on the same
      images and adapters in this process, at (a)'s mean batch size: no HTTP, no queue.

(a) sends multipart uploads (what ``curl -F`` and ``loradex.Client`` send for several images); the
same server is also measured with each image as the raw body (``image/png``, adapters in the
query), which spares the multipart encoding and parsing.

Printed per run: images/s, p50/p99 latency, mean images and adapters per pass (from the server's
/metrics), errors; then the ratios a/b and a/c. ``flat`` compares one batched server's traffic over K=64 adapters against K=1, in alternating rounds;
``lru`` serves 8 adapters with ``--max-adapters 4`` and reports the server's peak RSS (VmHWM)
against its RSS with one adapter plus 4 adapters' bytes; ``alias`` moves ``x@prod`` under
traffic and reports how long until answers came from the new version.

The server runs in its own process (``adapters serve``), the clients in this one (raw HTTP/1.1 over
asyncio streams). Both share the 2 cores, as a client and a server on one machine do.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SCENARIOS = {
    # name: (base, adapters, clients, seconds); targets from issue 21
    "tiny": ("tiny-vit", 8, 32, 8.0),
    "vit-base": ("vit-base", 8, 8, 20.0),
}


def build_registry(home: Path, base: str, count: int, *, names: list[str] | None = None) -> list[str]:
    """``count`` random classification adapters on ``base`` stored in a registry at ``home``; their refs."""
    from loradex.core import plugins
    from loradex.registry.store.registry import Registry
    from loradex.testing import random_adapter

    backbone = plugins.resolve_backbone(base).load(base)
    names = names or [f"a{k}" for k in range(count)]
    with Registry.open(home) as registry, tempfile.TemporaryDirectory() as scratch:
        for k, name in enumerate(names):
            folder = random_adapter(Path(scratch) / name, "classification", backbone=backbone, rank=16,
                                    targets="q,v", seed=k, scale=0.05)
            registry.put(folder, name=name)
    return [f"{name}@v1" for name in names]


def images_for(count: int, size: int) -> list[bytes]:
    """``count`` distinct PNG images of shapes, ``size`` pixels square."""
    from loradex.plugins.shapes import single_shape_image

    out = []
    for i in range(count):
        buffer = io.BytesIO()
        single_shape_image(1000, i, size, i % 5).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``adapters serve`` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, home: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "loradex.registry.cli", "--home", str(home), "serve", *args,
             "--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited:\n{Path(self.log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not become ready")

    def metrics(self) -> str:
        import httpx

        return httpx.get(f"{self.url}/metrics", timeout=30).text

    def rss(self, field: str = "VmRSS") -> int:
        """Bytes of the server's resident memory now (VmRSS) or at its peak (VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        os.unlink(self.log.name)


def raw_request(port: int, ref: str, image: bytes, name: str) -> bytes:
    """A whole HTTP/1.1 POST /v1/predict with the image as the body and the adapter in the query."""
    head = (f"POST /v1/predict?adapters={ref}&name={name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Length: {len(image)}\r\nContent-Type: image/png\r\n\r\n").encode()
    return head + image


def multipart_request(port: int, ref: str, image: bytes, name: str) -> bytes:
    """A whole HTTP/1.1 POST /v1/predict (keep-alive) with one image, encoded once before the run."""
    boundary = "loradexbenchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"adapters\"\r\n\r\n{ref}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
    return head + body


async def closed_loop(url: str, refs: list[str], images: list[bytes], *, clients: int, seconds: float,
                      warmup: float, raw: bool = False) -> dict:
    """``clients`` keep-alive connections, each sending one-image requests for ``seconds`` after ``warmup``.

    Requests are encoded before the run and answers read with asyncio streams, as wrk does, so
    the clients take little of the CPU the server needs; a non-200 answer counts as an error.
    """
    port = int(url.rsplit(":", 1)[1])
    encode = raw_request if raw else multipart_request
    requests = [[encode(port, refs[n % len(refs)], images[n % len(images)], f"img{n}.png")
                 for n in range(i, i + clients * 8, clients)] for i in range(clients)]
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                writer.write(requests[index][n % len(requests[index])])
                n += 1
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                done = time.perf_counter()
                if not status_line.startswith(b"HTTP/1.1 200"):
                    errors.append(f"{status_line.decode().strip()} {body[:120]!r}")
                elif measure_from <= done <= stop_at:  # answers completed in the window, whenever sent
                    latencies.append(done - sent)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors.append(repr(exc))
        finally:
            writer.close()

    await asyncio.gather(*[client(i) for i in range(clients)])
    return {"images_s": len(latencies) / seconds, "latencies": latencies, "errors": errors}


def measure_server(server: Server, refs: list[str], images: list[bytes], *, clients: int, seconds: float,
                   raw: bool = False) -> dict:
    """One closed-loop run against a running server; its figures plus per-pass means from /metrics."""
    from loradex.registry.serve.metrics import sample

    before = server.metrics()
    figures = asyncio.run(closed_loop(server.url, refs, images, clients=clients, seconds=seconds, warmup=1.0,
                                      raw=raw))
    after = server.metrics()

    def delta(name: str) -> float:
        return sample(after, name) - sample(before, name)

    passes = max(delta("loradex_batch_images_count"), 1)
    figures["images_per_pass"] = delta("loradex_batch_images_sum") / passes
    figures["adapters_per_pass"] = delta("loradex_batch_adapters_sum") / passes
    figures["pass_s"] = delta("loradex_batch_seconds_sum") / passes
    return figures


class Offline:
    """(c): the same one-image-one-adapter jobs through ``Predictor.run`` in this process, no HTTP."""

    def __init__(self, home: Path, refs: list[str], images: list[bytes]) -> None:
        from PIL import Image

        from loradex.core.predictor import Job, Predictor
        from loradex.core.threads import configure_threads
        from loradex.registry.loading import load

        configure_threads()
        model = load(refs, home=home)
        self.predictor = Predictor(model)
        heads = {h.key: h for h in model.head_entries()}
        decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
        self.jobs = [Job(image=decoded[n % len(decoded)], heads=(heads[refs[n % len(refs)]],), options={})
                     for n in range(max(len(refs), len(decoded)) * 4)]
        self.next = 0

    def run(self, *, batch: int, seconds: float) -> dict:
        """Images/s of passes of ``batch`` jobs for ``seconds`` (after one warm pass)."""
        def one_pass() -> None:
            self.predictor.run([self.jobs[(self.next + i) % len(self.jobs)] for i in range(batch)], batch_size=32)
            self.next += batch

        one_pass()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            one_pass()
            done += batch
        return {"images_s": done / (time.perf_counter() - start)}


def median_of(runs: list[dict]) -> dict:
    """The median images/s of several rounds, their latencies pooled, per-pass means averaged, errors summed."""
    out = {"images_s": statistics.median(r["images_s"] for r in runs),
           "latencies": [x for r in runs for x in r.get("latencies", [])],
           "errors": [e for r in runs for e in r.get("errors", [])]}
    for key in ("images_per_pass", "adapters_per_pass", "pass_s"):
        if key in runs[0]:
            out[key] = statistics.mean(r[key] for r in runs)
    return out


def describe(label: str, figures: dict) -> str:
    lat = sorted(figures.get("latencies") or [0.0])
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
    extra = ""
    if "images_per_pass" in figures:
        extra = (f"  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  images/pass {figures['images_per_pass']:5.1f}  "
                 f"adapters/pass {figures['adapters_per_pass']:4.1f}  errors {len(figures['errors'])}")
    return f"  {label:<34} {figures['images_s']:8.1f} images/s{extra}"


def scenario_abc(name: str, root: Path, *, rounds: int) -> None:
    """(a), (b) and (c) in alternating rounds (each starting with another), medians compared."""
    base, count, clients, seconds = SCENARIOS[name]
    home = root / name
    refs = build_registry(home, base, count)
    images = images_for(32, 224 if base == "vit-base" else 64)
    print(f"\n## {name}: {base}, K={count} adapters, {clients} clients, one image per request, "
          f"{rounds} rounds of {seconds:g} s each", flush=True)
    common = ("--max-wait-ms", "5", "--max-queue", "1024")
    with Server(home, "--max-batch", str(clients), *common) as batched, \
            Server(home, "--max-batch", "1", *common) as single:
        offline = Offline(home, refs, images)
        batch = max(1, round(measure_server(batched, refs, images, clients=clients, seconds=seconds / 2)
                             ["images_per_pass"]))
        steps = {"a": lambda: measure_server(batched, refs, images, clients=clients, seconds=seconds),
                 "b": lambda: measure_server(single, refs, images, clients=clients, seconds=seconds),
                 "c": lambda: offline.run(batch=batch, seconds=seconds),
                 "r": lambda: measure_server(batched, refs, images, clients=clients, seconds=seconds, raw=True)}
        runs: dict[str, list[dict]] = {key: [] for key in steps}
        for index in range(rounds):
            order = "abcr"[index % 4:] + "abcr"[:index % 4]
            for key in order:
                runs[key].append(steps[key]())
    a, b, c, r = (median_of(runs[k]) for k in "abcr")
    print(describe("(a) serve, batched", a), flush=True)
    print(describe("(b) serve --max-batch 1", b), flush=True)
    print(describe(f"(c) offline Predictor.run, batch {batch}", c), flush=True)
    print(describe("(a) with raw image bodies", r), flush=True)
    print(f"  a/b = {a['images_s'] / b['images_s']:.2f}x   a/c = {a['images_s'] / c['images_s']:.2f}x   "
          f"errors a={len(a['errors'])} b={len(b['errors'])}; a's pass {a['pass_s'] * 1000:.0f} ms for "
          f"{a['images_per_pass']:.1f} images; raw bodies / multipart = {r['images_s'] / a['images_s']:.2f}x",
          flush=True)


def scenario_flat(root: Path, *, rounds: int) -> None:
    """One batched server, alternating rounds of traffic over 1 and over 64 adapters."""
    clients, seconds = 32, 8.0
    home = root / "flat"
    refs = build_registry(home, "tiny-vit", 64)
    images = images_for(64, 64)
    print(f"\n## flat: tiny-vit, {clients} clients, one batched server, traffic over K=1 and K=64 adapters, "
          f"{rounds} rounds", flush=True)
    runs: dict[int, list[dict]] = {1: [], 64: []}
    with Server(home, "--max-batch", str(clients), "--max-wait-ms", "5", "--max-queue", "1024") as server:
        measure_server(server, refs, images, clients=clients, seconds=4.0)  # every adapter attached once
        for index in range(rounds):
            for k in ((1, 64) if index % 2 == 0 else (64, 1)):
                runs[k].append(measure_server(server, refs[:k], images, clients=clients, seconds=seconds))
    one, many = median_of(runs[1]), median_of(runs[64])
    print(describe("(a) K=1", one), flush=True)
    print(describe("(a) K=64", many), flush=True)
    print(f"  K=64 / K=1 = {many['images_s'] / one['images_s']:.2f}x   errors {len(one['errors']) + len(many['errors'])}",
          flush=True)


def scenario_lru(root: Path) -> None:
    from loradex.registry.serve.metrics import sample

    base, clients, seconds = "vit-base", 8, 20.0
    home = root / "lru"
    refs = build_registry(home, base, 8)
    images = images_for(16, 224)
    print(f"\n## lru: {base}, 8 adapters, --max-adapters 4, {clients} clients", flush=True)
    with Server(home, "--max-adapters", "4", "--max-batch", str(clients), "--max-wait-ms", "5") as server:
        asyncio.run(closed_loop(server.url, refs[:1], images, clients=clients, seconds=4.0, warmup=1.0))
        import httpx

        loaded = httpx.get(f"{server.url}/v1/adapters").json()["loaded"]
        one_adapter = loaded[0]["bytes"]
        base_rss = server.rss() - one_adapter
        figures = asyncio.run(closed_loop(server.url, refs, images, clients=clients, seconds=seconds, warmup=2.0))
        peak = server.rss("VmHWM")
        metrics = server.metrics()
        correct = _check_answers(home, server.url, refs, images[0])
    bound = base_rss + 4 * one_adapter
    print(f"{describe('served over 8 adapters', figures)}  errors {len(figures['errors'])}", flush=True)
    print(f"  peak RSS {peak / 2**20:.1f} MiB; base (warm, one adapter removed) {base_rss / 2**20:.1f} MiB + 4 adapters "
          f"x {one_adapter / 2**20:.2f} MiB = {bound / 2**20:.1f} MiB; peak / bound = {peak / bound:.3f}", flush=True)
    print(f"  loads {sample(metrics, 'loradex_adapter_loads_total'):.0f}, evictions "
          f"{sample(metrics, 'loradex_adapter_evictions_total'):.0f}, attached now "
          f"{sample(metrics, 'loradex_adapters_loaded'):.0f}; every answer equals offline predict: {correct}",
          flush=True)


def _check_answers(home: Path, url: str, refs: list[str], image_bytes: bytes) -> bool:
    """Whether the server's answer for each adapter on one image equals an offline model's (to 1e-5)."""
    import httpx
    from PIL import Image

    from loradex.core.predictor import Job, Predictor
    from loradex.registry.loading import load

    answers = {}
    for ref in refs:
        response = httpx.post(f"{url}/v1/predict", data={"adapters": ref}, timeout=120,
                              files=[("images", ("check.png", image_bytes, "image/png"))])
        answers[ref] = response.json()["results"][0]["predictions"][ref]
    model = load(refs, home=home)
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    heads = {h.key: h for h in model.head_entries()}
    offline = Predictor(model).run([Job(image=image, heads=(heads[r],), options={}) for r in refs])
    return all(found[ref]["label"] == answers[ref]["label"] and abs(found[ref]["score"] - answers[ref]["score"]) <= 1e-5
               for ref, found in zip(refs, offline))


def scenario_alias(root: Path) -> None:
    import threading

    import httpx

    from loradex.registry.store.registry import Registry

    home = root / "alias"
    build_registry(home, "tiny-vit", 2, names=["x", "x"])
    with Registry.open(home) as registry:
        registry.tag("x@v1", "prod")
    images = images_for(4, 64)
    print("\n## alias: `adapters tag x@v2 prod` while 8 clients ask for x@prod", flush=True)
    with Server(home, "--max-wait-ms", "5") as server:
        seen: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                while not stop.is_set():
                    response = http.post("/v1/predict", data={"adapters": "x@prod"},
                                         files=[("images", ("i.png", images[0], "image/png"))])
                    key = next(iter(response.json()["results"][0]["predictions"])) if response.is_success else "-"
                    seen.append((time.monotonic(), response.status_code, key))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        subprocess.run([sys.executable, "-m", "loradex.registry.cli", "--home", str(home), "tag", "x@v2", "prod"],
                       check=True, capture_output=True)
        moved = time.monotonic()
        time.sleep(3)
        stop.set()
        for thread in threads:
            thread.join()
    first_v2 = min((t for t, _, key in seen if key == "x@v2"), default=None)
    last_v1 = max((t for t, _, key in seen if key == "x@v1"), default=moved)
    failed = sum(1 for _, status, _ in seen if status != 200)
    print(f"  {len(seen)} requests, {failed} failed; first x@v2 answer {1000 * (first_v2 - moved):.0f} ms after the "
          f"tag returned, last x@v1 answer {1000 * (last_v1 - moved):.0f} ms after it", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["tiny", "vit-base", "flat", "lru", "alias"], action="append",
                        help="Run only these scenarios (repeatable).")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds per comparison (medians).")
    args = parser.parse_args()
    chosen = args.only or ["tiny", "vit-base", "flat", "lru", "alias"]
    print(f"bench/serve.py on {os.cpu_count()} CPUs; server and clients on 127.0.0.1", flush=True)
    with tempfile.TemporaryDirectory(prefix="loradex-bench-serve-") as scratch:
        root = Path(scratch)
        for name in chosen:
            if name in SCENARIOS:
                scenario_abc(name, root, rounds=args.rounds)
            elif name == "flat":
                scenario_flat(root, rounds=args.rounds)
            elif name == "lru":
                scenario_lru(root)
            else:
                scenario_alias(root)


if __name__ == "__main__":
    main()
