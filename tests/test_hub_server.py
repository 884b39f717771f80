"""The test Hub server, driven by the real, unmodified huggingface_hub client."""

from __future__ import annotations

import hashlib
import os
import types
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http

from .hub_server import LFS_POINTER, HubServer

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}

# The client itself passes `data=` for raw bytes, which httpx2 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running server, and a client set to reach it: online, no Xet, nothing read from the real home."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # tests/conftest.py sets it before the import
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)  # else the client asks huggingface.co
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    with HubServer(tmp_path / "hub", tokens=TOKENS) as server:
        yield server


def api(hub, token="tok-alice"):
    """A client of `hub` acting with `token` (False: anonymous)."""
    return HfApi(endpoint=hub.endpoint, token=token)


def download(hub, repo_id, filename, **kwargs):
    """`hf_hub_download` from `hub`, anonymously, into the test's cache."""
    return huggingface_hub.hf_hub_download(repo_id, filename, endpoint=hub.endpoint, token=False, **kwargs)


@pytest.fixture
def folder(tmp_path):
    """A folder to upload: a text file in a subfolder and a binary .safetensors file of 3000 bytes."""
    root = tmp_path / "upload"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "notes.txt").write_text("hello hub\n")
    (root / "adapter.safetensors").write_bytes(os.urandom(3000))
    return root


def test_push_tag_and_pull_back(hub, folder):
    alice = api(hub)
    assert alice.whoami()["name"] == "alice"
    assert alice.create_repo("alice/demo").endswith("/alice/demo")
    first = alice.upload_folder(repo_id="alice/demo", folder_path=folder, commit_message="first")
    alice.create_tag("alice/demo", tag="v1", tag_message="release 1")
    old_weights = (folder / "adapter.safetensors").read_bytes()
    (folder / "adapter.safetensors").write_bytes(os.urandom(3000))
    second = alice.upload_folder(repo_id="alice/demo", folder_path=folder, commit_message="second")

    # Real git underneath: the tag is a git ref, the LFS file's blob is a pointer.
    git = hub.repo("alice/demo").git
    assert git("rev-parse", "v1^{commit}").decode().strip() == first.oid
    assert git("rev-parse", "main").decode().strip() == second.oid
    oid = hashlib.sha256(old_weights).hexdigest()
    assert git("show", f"{first.oid}:adapter.safetensors").decode() == LFS_POINTER.format(oid=oid, size=3000)

    refs = alice.list_repo_refs("alice/demo")
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v1", first.oid)]
    assert [b.name for b in refs.branches] == ["main"]
    assert [c.title for c in alice.list_repo_commits("alice/demo")] == ["second", "first", "initial commit"]

    assert Path(download(hub, "alice/demo", "adapter.safetensors", revision="v1")).read_bytes() == old_weights
    snapshot = Path(huggingface_hub.snapshot_download("alice/demo", endpoint=hub.endpoint, token=False))
    assert (snapshot / "adapter.safetensors").read_bytes() == (folder / "adapter.safetensors").read_bytes()
    assert (snapshot / "docs" / "notes.txt").read_text() == "hello hub\n"
    at_first = Path(huggingface_hub.snapshot_download("alice/demo", revision=first.oid[:12], endpoint=hub.endpoint))
    assert (at_first / "adapter.safetensors").read_bytes() == old_weights


def test_info_tree_and_paths(hub, folder):
    alice = api(hub)
    alice.create_repo("alice/demo")
    commit = alice.upload_folder(repo_id="alice/demo", folder_path=folder, commit_message="first")

    info = alice.model_info("alice/demo", files_metadata=True)
    assert info.sha == commit.oid and info.private is False
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", "docs/notes.txt", "adapter.safetensors"}
    assert siblings["adapter.safetensors"].lfs.size == 3000 and siblings["docs/notes.txt"].lfs is None

    tree = {entry.path: entry for entry in alice.list_repo_tree("alice/demo", recursive=True)}
    assert set(tree) == {".gitattributes", "docs", "docs/notes.txt", "adapter.safetensors"}
    assert tree["adapter.safetensors"].size == 3000
    assert [e.path for e in alice.list_repo_tree("alice/demo", path_in_repo="docs")] == ["docs/notes.txt"]
    paths = alice.get_paths_info("alice/demo", ["docs", "adapter.safetensors", "missing"], revision=commit.oid)
    assert [p.path for p in paths] == ["docs", "adapter.safetensors"]

    hub.page_size = 2
    assert len(list(alice.list_repo_tree("alice/demo", recursive=True))) == 4
    assert sum(path.endswith("/tree/main") for _, path in hub.requests) == 3  # the listing above, then 2 pages


def test_lfs_and_regular_files_take_their_own_paths(hub, folder):
    alice = api(hub)
    alice.create_repo("alice/demo")
    alice.upload_folder(repo_id="alice/demo", folder_path=folder, commit_message="first")
    assert hub.lfs_bytes_received == 3000
    assert 0 < hub.commit_bytes_received < 3000  # the text file, base64 in the NDJSON, not the weights
    assert hub.bytes_received == sum(hub.bytes_by_kind.values())

    before = dict(hub.bytes_by_kind)
    alice.upload_folder(repo_id="alice/demo", folder_path=folder, commit_message="unchanged")
    assert hub.bytes_by_kind["lfs"] == before["lfs"] and hub.bytes_by_kind["commit"] == before["commit"]
    assert len(alice.list_repo_commits("alice/demo")) == 2  # the client skipped the empty commit

    # Same bytes under a new name: the LFS batch says the object is stored, so nothing is uploaded again.
    alice.upload_file(repo_id="alice/demo", path_or_fileobj=folder / "adapter.safetensors", path_in_repo="copy.bin")
    assert hub.lfs_bytes_received == 3000 and hub.lfs_uploads == 1


def test_writes_need_the_namespace_owner(hub):
    anonymous, bob = api(hub, token=False), api(hub, token="tok-bob")
    api(hub).create_repo("alice/demo")
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.create_repo("alice/other")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.upload_file(repo_id="alice/demo", path_or_fileobj=b"x", path_in_repo="x.txt")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        bob.upload_file(repo_id="alice/demo", path_or_fileobj=b"x", path_in_repo="x.txt")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        bob.create_repo("alice/other")
    assert err.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as err:
        api(hub, token="tok-nobody").model_info("alice/demo")
    assert err.value.response.status_code == 401
    assert anonymous.model_info("alice/demo").id == "alice/demo"  # public reads need no token


def test_private_repo_is_hidden_from_others(hub):
    api(hub).create_repo("alice/secret", private=True)
    assert api(hub).model_info("alice/secret").private is True
    for reader in (api(hub, token=False), api(hub, token="tok-bob")):
        with pytest.raises(RepositoryNotFoundError):
            reader.model_info("alice/secret")


def test_missing_repo_revision_and_entry_raise_typed_errors(hub):
    alice = api(hub)
    alice.create_repo("alice/demo")
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info("alice/nothing")
    with pytest.raises(RepositoryNotFoundError):
        download(hub, "alice/nothing", "x.txt")
    with pytest.raises(RevisionNotFoundError):
        alice.model_info("alice/demo", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        download(hub, "alice/demo", "x.txt", revision="v9")
    with pytest.raises(EntryNotFoundError) as err:
        download(hub, "alice/demo", "x.txt")
    assert err.value.response.headers["X-Repo-Commit"] == alice.model_info("alice/demo").sha
    alice.delete_repo("alice/demo")
    with pytest.raises(RepositoryNotFoundError):
        alice.delete_repo("alice/demo")


def test_stale_parent_commit_and_existing_refs_are_refused(hub):
    alice = api(hub)
    alice.create_repo("alice/demo")
    initial = alice.model_info("alice/demo").sha
    alice.upload_file(repo_id="alice/demo", path_or_fileobj=b"one", path_in_repo="a.txt")
    with pytest.raises(HfHubHTTPError) as err:
        alice.create_commit("alice/demo", [CommitOperationAdd("b.txt", b"two")], commit_message="late",
                            parent_commit=initial)
    assert err.value.response.status_code == 412
    alice.create_branch("alice/demo", branch="dev", revision=initial)
    with pytest.raises(HfHubHTTPError) as err:
        alice.create_branch("alice/demo", branch="dev")
    assert err.value.response.status_code == 409
    alice.create_tag("alice/demo", tag="v1", revision="dev")
    assert alice.list_repo_refs("alice/demo").tags[0].target_commit == initial
    alice.delete_tag("alice/demo", tag="v1")
    alice.delete_branch("alice/demo", branch="dev")
    refs = alice.list_repo_refs("alice/demo")
    assert refs.tags == [] and [b.name for b in refs.branches] == ["main"]


@pytest.mark.parametrize("failure_status", [None, 507], ids=["hang-up", "507"])
def test_interrupted_push_resends_only_missing_objects(hub, monkeypatch, failure_status):
    # The client retries a dropped connection 5 times with 23 s of back-off sleeps: skip the sleeping.
    monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    alice = api(hub)
    alice.create_repo("alice/demo")
    weights = {f"w{i}.safetensors": os.urandom(2000 + i) for i in range(4)}
    hub.fail_after_lfs_uploads, hub.lfs_failure_status = 2, failure_status
    with pytest.raises(RuntimeError, match="Error while uploading"):
        alice.create_commit("alice/demo", [CommitOperationAdd(p, b) for p, b in weights.items()], commit_message="up")
    assert hub.lfs_uploads == 2
    assert alice.list_repo_commits("alice/demo")[0].title == "initial commit"

    stored = {path.name for path in (hub.root / "lfs").iterdir()}
    sizes = {hashlib.sha256(data).hexdigest(): len(data) for data in weights.values()}

    hub.fail_after_lfs_uploads = None  # the server is back
    sent = hub.lfs_bytes_received
    alice.create_commit("alice/demo", [CommitOperationAdd(p, b) for p, b in weights.items()], commit_message="up")
    assert hub.lfs_uploads == 4
    assert hub.lfs_bytes_received - sent == sum(size for oid, size in sizes.items() if oid not in stored)
    for path, data in weights.items():
        assert Path(download(hub, "alice/demo", path)).read_bytes() == data


def test_corrupted_lfs_object_is_served_under_its_original_etag(hub, tmp_path):
    alice = api(hub)
    alice.create_repo("alice/demo")
    weights = os.urandom(3000)
    oid = hashlib.sha256(weights).hexdigest()
    alice.upload_file(repo_id="alice/demo", path_or_fileobj=weights, path_in_repo="adapter.safetensors")
    hub.corrupt_lfs(oid)

    metadata = huggingface_hub.get_hf_file_metadata(
        huggingface_hub.hf_hub_url("alice/demo", "adapter.safetensors", endpoint=hub.endpoint), token=False)
    assert metadata.etag == oid and metadata.size == 3000
    # hf_hub_download does not re-hash what it gets: the damage shows only to a caller who checks.
    local = tmp_path / "local"
    path = huggingface_hub.hf_hub_download("alice/demo", "adapter.safetensors", local_dir=local,
                                           endpoint=hub.endpoint, token=False)
    data = Path(path).read_bytes()
    assert len(data) == 3000 and hashlib.sha256(data).hexdigest() != oid
    check = alice.verify_repo_checksums("alice/demo", local_dir=local)
    assert [m["path"] for m in check.mismatches] == ["adapter.safetensors"]


def test_range_requests_and_restart_on_the_same_root(hub):
    alice = api(hub)
    alice.create_repo("alice/demo")
    commit = alice.upload_file(repo_id="alice/demo", path_or_fileobj=b"0123456789", path_in_repo="digits.txt")
    url = huggingface_hub.hf_hub_url("alice/demo", "digits.txt", endpoint=hub.endpoint)
    session = _http.get_session()
    partial = session.get(url, headers={"Range": "bytes=2-5"})
    assert partial.status_code == 206 and partial.content == b"2345"
    assert partial.headers["Content-Range"] == "bytes 2-5/10"
    assert session.get(url, headers={"Range": "bytes=-3"}).content == b"789"
    assert session.get(url, headers={"Range": "bytes=20-"}).status_code == 416

    hub.stop()
    with HubServer(hub.root, tokens=TOKENS) as again:
        assert HfApi(endpoint=again.endpoint).model_info("alice/demo").sha == commit.oid
