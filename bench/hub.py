"""Pushing and pulling through a Hub: bytes on the wire, and pull time of an adapter vs a merged model.

    uv run python bench/hub.py

Against the Hub-compatible test server on 127.0.0.1 (tests/hub_server.py), with the real
huggingface_hub client, for a ViT-Base-sized adapter (random LoRA r=16 on q and v, 5-class head):

1. bytes sent to push a new version, over the size of the version's files (goal 1.0);
2. bytes sent to push it again (goal 0: the Hub has it);
3. seconds to pull the adapter (``adapters pull``), against downloading the same base with the
   LoRA merged in (``export --merged`` pushed as a plain model repo), median of 3 fresh pulls each.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ["HF_HUB_OFFLINE"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.hub_server

TOKEN = "tok-bench"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as scratch:
        work = Path(scratch)
        os.environ["HF_HOME"] = str(work / "hf-home")
        from tests.hub_server import HubServer

        with HubServer(work / "hub", tokens={TOKEN: "bench"}) as hub:
            os.environ["HF_ENDPOINT"] = hub.endpoint
            run(hub, work)


def run(hub, work: Path) -> None:
    from huggingface_hub import HfApi, snapshot_download

    from loradex.core import plugins
    from loradex.registry.derive.export_merged import export_merged
    from loradex.registry.hub.client import pull, push
    from loradex.registry.store.registry import Registry
    from loradex.testing import random_adapter

    backbone = plugins.resolve_backbone("vit-base").load("vit-base")
    registry = Registry.open(work / "home")
    record = registry.put(random_adapter(work / "adapter", "classification", backbone=backbone, rank=16,
                                         targets="q,v", scale=0.05), name="vb")
    size = record.size
    before = hub.bytes_received
    push(registry, "vb", repo_id="bench/vb", endpoint=hub.endpoint, token=TOKEN)
    first = hub.bytes_received - before
    before = hub.bytes_received
    push(registry, "vb", repo_id="bench/vb", endpoint=hub.endpoint, token=TOKEN)
    again = hub.bytes_received - before
    print(f"push a new version: {first:,} bytes sent for {size:,} bytes of files = {first / size:.3f}x "
          f"(goal 1.0; the model card and the hash manifest replace the local card)")
    print(f"push it again:      {again:,} bytes sent (goal 0: the Hub has every file; what is left is the "
          "create-repo request)")

    merged = export_merged(record, registry.materialize(record), work / "merged")
    api = HfApi(endpoint=hub.endpoint, token=TOKEN)
    api.create_repo("bench/vb-merged")
    api.upload_folder(repo_id="bench/vb-merged", folder_path=str(merged))
    merged_bytes = sum(p.stat().st_size for p in merged.rglob("*") if p.is_file())

    adapter_times, merged_times = [], []
    for round_index in range(3):
        cache = work / f"cache{round_index}"
        os.environ["HF_HUB_CACHE"] = str(cache)
        import huggingface_hub.constants as constants

        constants.HF_HUB_CACHE = str(cache)
        fresh = Registry.open(work / f"pulled{round_index}")
        start = time.perf_counter()
        pull(fresh, "bench/vb@v1", endpoint=hub.endpoint, token=TOKEN)
        adapter_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        snapshot_download("bench/vb-merged", endpoint=hub.endpoint, token=TOKEN, cache_dir=str(work / f"m{round_index}"))
        merged_times.append(time.perf_counter() - start)
    a, m = statistics.median(adapter_times), statistics.median(merged_times)
    print(f"pull the adapter:   {a:.2f} s ({size / 1e6:.1f} MB, checked and registered); the merged model "
          f"({merged_bytes / 1e6:.0f} MB): {m:.2f} s; the adapter is {m / a:.1f}x faster (median of 3 fresh pulls)")


if __name__ == "__main__":
    main()
