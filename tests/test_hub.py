"""`adapters push` / `pull` with the real huggingface_hub client against a Hub-compatible server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from loradex.core import plugins
from loradex.registry.cli import cli
from loradex.registry.store.registry import Registry
from loradex.testing import random_adapter

from .hub_server import HubServer

ALICE, BOB = "tok-alice-5f1c2e", "tok-bob-99aa01"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fresh Hub server, the client pointed at it (Xet off, online), alice logged in through HF_TOKEN."""
    import huggingface_hub
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api  # noqa: F401  (patched below; not imported yet when this test runs alone)

    with HubServer(tmp_path / "hub", tokens={ALICE: "alice", BOB: "bob"}) as server:
        # what HF_ENDPOINT, HF_HUB_OFFLINE=0, HF_HUB_DISABLE_XET=1 ... set before the import would give
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
        monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", server.endpoint)  # file_exists() & co
        monkeypatch.setenv("HF_TOKEN", ALICE)
        yield server


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Adapter folders with random weights: two classification versions, detection, pose."""
    root = tmp_path_factory.mktemp("hub-adapters")
    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    return {
        "cls1": random_adapter(root / "cls1", "classification", backbone=backbone, seed=1),
        "cls2": random_adapter(root / "cls2", "classification", backbone=backbone, seed=2),
        "det": random_adapter(root / "det", "detection", backbone=backbone, seed=3, image_size=96),
        "pose": random_adapter(root / "pose", "pose", backbone=backbone, seed=4),
    }


def run(home, *args):
    return CliRunner().invoke(cli, ["--home", str(home), *map(str, args)])


def registry_with(home, adapters, **named):
    with Registry.open(home) as registry:
        for name, keys in named.items():
            for key in keys:
                registry.put(adapters[key], name=name, metrics={"score": 0.5 + len(key) / 100},
                             args={"data": "synthetic:train=8,val=8,test=0"})
    return home


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


PAYLOAD = ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "loradex.json", "metrics.json")


def test_push_tags_each_version_and_pull_gets_each_versions_bytes(hub, adapters, tmp_path):
    home = registry_with(tmp_path / "home", adapters, shapes=["cls1", "cls2"])
    first = run(home, "push", "shapes@v1", "--repo", "alice/shapes", "--json")
    assert first.exit_code == 0, first.output
    pushed = json.loads(first.stdout)
    assert [(v["tag"], v["uploaded"]) for v in pushed["versions"]] == [("v1", True)]
    assert run(home, "push", "shapes", "--all-versions", "--repo", "alice/shapes").exit_code == 0
    sent, lfs_sent, commits = hub.bytes_received, hub.lfs_bytes_received, hub.commit_bytes_received
    again = run(home, "push", "shapes", "--all-versions", "--repo", "alice/shapes", "--json")
    assert [v["uploaded"] for v in json.loads(again.stdout)["versions"]] == [False, False]
    assert hub.lfs_bytes_received == lfs_sent and hub.commit_bytes_received == commits, \
        "pushing versions the Hub has sends no files"
    assert hub.bytes_received - sent < 500  # create_repo's small JSON body, nothing else

    other = tmp_path / "other"
    pulled = run(other, "pull", "alice/shapes@v1", "--json")
    assert pulled.exit_code == 0, pulled.output
    record = json.loads(pulled.stdout)
    assert record["kind"] == "pulled" and record["args"]["origin"]["repo"] == "alice/shapes"
    assert record["args"]["origin"]["revision"] == "v1"
    with Registry.open(other) as mine, Registry.open(home) as theirs:
        got, want = mine.materialize(record["ref"]), theirs.materialize("shapes@v1")
        for name in PAYLOAD:
            assert digest(got / name) == digest(want / name), name
        assert digest(mine.materialize(mine.resolve(record["ref"])) / "adapter_model.safetensors") != digest(
            theirs.materialize("shapes@v2") / "adapter_model.safetensors")
    again = run(other, "pull", "alice/shapes@v1", "--json")
    assert json.loads(again.stdout)["ref"] == record["ref"], "a commit pulled before is not registered twice"


def test_plain_peft_loads_the_pushed_adapter_at_a_revision(hub, adapters, tmp_path):
    import torch
    from peft import PeftModel

    from loradex.core.multitask import MultiTaskModel

    home = registry_with(tmp_path / "home", adapters, shapes=["cls1", "cls2"])
    assert run(home, "push", "shapes", "--all-versions", "--repo", "alice/shapes").exit_code == 0
    backbone = plugins.resolve_backbone("tiny-vit").load("tiny-vit")
    peft = PeftModel.from_pretrained(backbone.model, "alice/shapes", revision="v1").eval()
    ours = MultiTaskModel(plugins.resolve_backbone("tiny-vit").load("tiny-vit"))
    ours.attach("cls1", adapters["cls1"])
    pixels = torch.randn(2, 3, 64, 64)
    from loradex.core.lora_runtime import Segment

    with torch.inference_mode():
        reference = peft(pixel_values=pixels).last_hidden_state
        features = ours.encode_rows(pixels, [Segment(ours.adapters["cls1"].lora, 0, 2)])
    assert torch.allclose(features.patches.flatten(1, 2), reference[:, 1:], atol=1e-5)


def test_aliases_become_branches_that_follow_the_alias(hub, adapters, tmp_path):
    from huggingface_hub import HfApi

    home = registry_with(tmp_path / "home", adapters, shapes=["cls1", "cls2"])
    with Registry.open(home) as registry:
        registry.tag("shapes@v1", "prod")
    assert run(home, "push", "shapes", "--all-versions", "--repo", "alice/shapes").exit_code == 0
    refs = HfApi(endpoint=hub.endpoint).list_repo_refs("alice/shapes")
    tags = {t.name: t.target_commit for t in refs.tags}
    branches = {b.name: b.target_commit for b in refs.branches}
    assert set(tags) == {"v1", "v2"} and branches["prod"] == tags["v1"] and branches["main"] == tags["v2"]
    with Registry.open(home) as registry:
        registry.tag("shapes@v2", "prod")
    assert run(home, "push", "shapes@v2", "--repo", "alice/shapes").exit_code == 0
    refs = HfApi(endpoint=hub.endpoint).list_repo_refs("alice/shapes")
    assert {b.name: b.target_commit for b in refs.branches}["prod"] == tags["v2"]


def test_the_model_card_carries_what_the_hub_reads(hub, adapters, tmp_path):
    from huggingface_hub import ModelCard, hf_hub_download

    home = registry_with(tmp_path / "home", adapters, shapes=["cls1"])
    assert run(home, "push", "shapes", "--repo", "alice/shapes").exit_code == 0
    card = ModelCard.load(hf_hub_download("alice/shapes", "README.md", revision="v1"))
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "image-classification"
    assert {"loradex", "classification"} <= set(data["tags"])
    assert data["model-index"][0]["results"], "the stored metrics are in model-index"
    assert 'PeftModel.from_pretrained(base, "alice/shapes", revision="v1")' in card.text
    assert "adapters pull alice/shapes@v1" in card.text


def test_each_builtin_task_round_trips_with_identical_predictions(hub, adapters, tmp_path):
    import loradex
    from loradex.plugins.shapes import scene_image

    home = registry_with(tmp_path / "home", adapters, cls=["cls1"], det=["det"], pose=["pose"])
    for name in ("cls", "det", "pose"):
        result = run(home, "push", name, "--repo", f"alice/{name}")
        assert result.exit_code == 0, result.output
    images = [scene_image(2, i, 96)[0] for i in range(2)]
    theirs = loradex.load(["cls", "det", "pose"], home=home).predict(images)
    other = tmp_path / "other"
    mine = loradex.load(["alice/cls@v1", "alice/det@v1", "alice/pose@v1"], home=other).predict(images)  # pulled
    for a, b in zip(theirs, mine):
        assert [r.prediction for r in a] == [r.prediction for r in b]
    with Registry.open(other) as mine_reg, Registry.open(home) as theirs_reg:
        for name in ("cls", "det", "pose"):
            for file in ("adapter_model.safetensors", "loradex.json"):
                assert digest(mine_reg.materialize(name) / file) == digest(theirs_reg.materialize(name) / file)


def test_a_merged_multitask_adapter_round_trips(hub, adapters, tmp_path):
    home = registry_with(tmp_path / "home", adapters, cls=["cls1"], pose=["pose"])
    assert run(home, "merge", "cls", "pose", "--name", "both").exit_code == 0
    assert run(home, "push", "both", "--repo", "alice/both").exit_code == 0
    other = tmp_path / "other"
    pulled = json.loads(run(other, "pull", "alice/both@v1", "--json").stdout)
    assert pulled["spec"]["format"] == 2 and set(pulled["files"]) >= {"head.classification.safetensors",
                                                                      "head.pose.safetensors"}


def test_predict_pulls_a_hub_reference_on_demand(hub, adapters, tmp_path):
    from loradex.plugins.shapes import single_shape_image

    home = registry_with(tmp_path / "home", adapters, shapes=["cls1"])
    assert run(home, "push", "shapes", "--repo", "alice/shapes").exit_code == 0
    single_shape_image(1, 1, 64, 1).save(tmp_path / "x.png")
    result = run(tmp_path / "fresh", "predict", "alice/shapes@v1", tmp_path / "x.png", "--json")
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)[0]["predictions"]) == ["shapes@v1"]


def test_a_plain_peft_repo_is_imported_with_its_task(hub, adapters, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.endpoint, token=ALICE)
    api.create_repo("alice/plain")
    api.upload_file(path_or_fileobj=str(adapters["cls1"] / "adapter_config.json"), path_in_repo="adapter_config.json",
                    repo_id="alice/plain")
    api.upload_file(path_or_fileobj=str(adapters["cls1"] / "adapter_model.safetensors"),
                    path_in_repo="adapter_model.safetensors", repo_id="alice/plain")
    refused = run(tmp_path / "home", "pull", "alice/plain")
    assert refused.exit_code != 0 and "say its task with --task" in refused.stderr
    pulled = run(tmp_path / "home", "pull", "alice/plain", "--task", "classification", "--json")
    assert pulled.exit_code == 0, pulled.output
    assert json.loads(pulled.stdout)["kind"] == "pulled"


def one_line(result, message, *, not_in=()):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and message in last, result.stderr
    for secret in not_in:
        assert secret not in result.output


def test_hub_errors_are_one_line_and_never_show_the_token(hub, adapters, tmp_path, monkeypatch):
    home = registry_with(tmp_path / "home", adapters, shapes=["cls1"])
    before = json.loads(run(home, "list", "--json").stdout)
    one_line(run(home, "pull", "alice/nope"), "repository not found", not_in=(ALICE,))
    assert run(home, "push", "shapes", "--repo", "alice/shapes").exit_code == 0
    one_line(run(home, "pull", "alice/shapes@v9"), "revision not found", not_in=(ALICE,))
    monkeypatch.setenv("HF_TOKEN", BOB)
    one_line(run(home, "push", "shapes", "--repo", "alice/shapes2"), "forbidden", not_in=(BOB,))
    monkeypatch.delenv("HF_TOKEN")
    one_line(run(home, "push", "shapes", "--repo", "alice/shapes3"), "not authorised")
    one_line(run(home, "push", "shapes"), "name the repo (--repo ORG/REPO), or log in")
    assert json.loads(run(home, "list", "--json").stdout) == before


def test_a_push_cut_short_changes_nothing_locally_and_a_retry_sends_only_what_is_missing(hub, adapters, tmp_path):
    home = registry_with(tmp_path / "home", adapters, shapes=["cls1"])
    before = sorted(p.name for p in (home / "blobs").rglob("*"))
    hub.lfs_failure_status = 507  # answered at once (the client retries a dropped connection for ~23 s)
    hub.fail_after_lfs_uploads = hub.lfs_uploads + 1  # the server fails after one more LFS object
    failed = run(home, "push", "shapes", "--repo", "alice/shapes")
    assert failed.exit_code != 0 and "Traceback" not in failed.output
    assert sorted(p.name for p in (home / "blobs").rglob("*")) == before
    assert run(home, "verify").exit_code == 0
    sent_before_retry = hub.lfs_bytes_received
    hub.fail_after_lfs_uploads = None
    retried = run(home, "push", "shapes", "--repo", "alice/shapes", "--json")
    assert retried.exit_code == 0, retried.output
    lfs_sizes = sum((adapters["cls1"] / f).stat().st_size for f in ("adapter_model.safetensors", "head.safetensors"))
    assert hub.lfs_bytes_received - sent_before_retry < lfs_sizes, "the retry sent an object the Hub had"


def test_a_pulled_file_whose_hash_does_not_match_is_refused(hub, adapters, tmp_path):
    home = registry_with(tmp_path / "home", adapters, shapes=["cls1"])
    assert run(home, "push", "shapes", "--repo", "alice/shapes").exit_code == 0
    oid = digest(adapters["cls1"] / "adapter_model.safetensors")
    good = hub.lfs_path(oid).read_bytes()
    hub.corrupt_lfs(oid)
    other = tmp_path / "other"
    one_line(run(other, "pull", "alice/shapes@v1"), "does not match")
    assert json.loads(run(other, "list", "--json").stdout) == []
    hub.corrupt_lfs(oid, good)  # restored on the Hub: a retry must fetch it again, not reuse the bad copy (22.8)
    pulled = run(other, "pull", "alice/shapes@v1")
    assert pulled.exit_code == 0, pulled.output
    assert run(other, "verify").exit_code == 0


@pytest.mark.parametrize(("change", "message"), [
    (lambda spec, config: spec.update(task="segmentationn"), "unknown task 'segmentationn'"),
    (lambda spec, config: config.update(r=10**12), "says r=1000000000000"),
])
def test_pull_makes_the_checks_import_makes(hub, adapters, tmp_path, change, message):
    """Issue 22.7: a repo naming an unknown task, or a rank its tensors do not have, was registered."""
    import shutil

    from huggingface_hub import HfApi

    folder = tmp_path / "repo"
    shutil.copytree(adapters["cls1"], folder)
    spec, config = (json.loads((folder / n).read_text()) for n in ("loradex.json", "adapter_config.json"))
    change(spec, config)
    (folder / "loradex.json").write_text(json.dumps(spec))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    api = HfApi(endpoint=hub.endpoint, token=ALICE)
    api.create_repo("alice/odd")
    api.upload_folder(folder_path=str(folder), repo_id="alice/odd")
    home = tmp_path / "home"
    one_line(run(home, "pull", "alice/odd"), message)
    assert json.loads(run(home, "list", "--json").stdout) == [] and run(home, "verify").exit_code == 0


def test_a_hub_that_hangs_up_mid_upload_is_one_line_and_changes_nothing(hub, adapters, tmp_path):
    """Issue 22.16: after the client's retries, three chained tracebacks (httpx → RuntimeError → ...)."""
    home = registry_with(tmp_path / "home", adapters, shapes=["cls1"])
    hub.fail_after_lfs_uploads = hub.lfs_uploads + 1  # then every LFS upload is answered by hanging up
    failed = run(home, "push", "shapes", "--repo", "alice/shapes")
    one_line(failed, "the Hub could not be reached or stopped answering (RemoteProtocolError", not_in=(ALICE,))
    assert "run it again to resume" in failed.stderr and run(home, "verify").exit_code == 0


def test_a_registry_written_by_e3946c2_lists_predicts_merges_and_pushes(hub, tmp_path):
    """Issue 23: a registry as loradex e3946c2 wrote it (tests/fixtures/registry-e3946c2: two trained
    tiny-vit adapters whose loradex.json still holds workers/cache/compile, an alias) keeps working."""
    import shutil
    from pathlib import Path

    from PIL import Image

    home = tmp_path / "home"
    shutil.copytree(Path(__file__).parent / "fixtures" / "registry-e3946c2", home)
    listed = {row["name"]: row for row in json.loads(run(home, "list", "--json").stdout)}
    assert set(listed) == {"classification", "detection"}
    assert run(home, "show", "classification@prod", "--json").exit_code == 0
    assert run(home, "verify").exit_code == 0
    image = tmp_path / "photo.png"
    Image.new("RGB", (90, 70), (200, 30, 30)).save(image)
    predicted = run(home, "predict", "classification@prod,detection", image, "--json")
    assert predicted.exit_code == 0, predicted.output
    assert set(json.loads(predicted.stdout)[0]["predictions"]) == {"classification@v1", "detection@v1"}
    merged = run(home, "merge", "classification@prod", "detection", "--name", "both", "--json")
    assert merged.exit_code == 0, merged.output
    with Registry.open(home) as registry:
        stored = json.loads((registry.materialize("both") / "loradex.json").read_text())
    assert "workers" not in json.dumps(stored)
    pushed = run(home, "push", "both", "--repo", "alice/both", "--json")
    assert pushed.exit_code == 0, pushed.output
    pulled = run(tmp_path / "other", "pull", "alice/both@v1", "--json")
    assert pulled.exit_code == 0, pulled.output
