"""The registry on a Hugging Face Hub: ``push`` a version as a tagged commit, ``pull`` one back.

A Hub repo holds one adapter. Each pushed version is one commit on ``main`` in PEFT's layout
(``adapter_config.json``, ``adapter_model.safetensors`` — so ``PeftModel.from_pretrained(base,
repo, revision="v3")`` works — plus the head(s), ``loradex.json``, ``metrics.json``, a model
card and ``loradex.files.json``, the sha256 of every file), tagged ``vN``. Versions never move,
so they are tags; aliases move, so they are branches (``prod`` → the commit of the version it
names). A version already on the Hub uploads nothing; huggingface_hub skips unchanged files
and LFS objects the server already holds, so a push that failed half-way resumes.

``pull`` downloads through huggingface_hub (its cache, resume and offline mode), checks every
file against the hash the Hub reports and against ``loradex.files.json``, and registers a local
version whose lineage says where it came from. Tokens come from huggingface_hub's usual places
(``HF_TOKEN``, ``hf auth login``) and never appear in output or errors.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loradex.core.artifact import SPEC_FILE
from loradex.core.errors import ConfigError, HubError, HubNotFoundError, LoradexError, first_line
from loradex.core.home import file_digest
from loradex.core.scratch import scratch_folder

from loradex.registry.store import names
from loradex.registry.hub.card import model_card
from loradex.registry.store.registry import Registry, VersionRecord

FILES_MANIFEST = "loradex.files.json"
_HUB_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


def is_hub_ref(ref: str) -> bool:
    """Whether ``ref`` names a Hub repo (``org/repo[@rev]``) rather than a local adapter."""
    return "/" in ref and bool(_HUB_REF.match(ref))


def parse_hub_ref(ref: str) -> tuple[str, str]:
    """``org/repo@v2`` → (``org/repo``, ``v2``); the revision defaults to ``main``."""
    match = _HUB_REF.match(ref)
    if not match:
        raise ConfigError(f"{ref!r} is not a Hub reference: write ORG/REPO or ORG/REPO@REVISION")
    return match["repo"], match["rev"] or "main"


@dataclass(frozen=True)
class PushedVersion:
    """One version as it stands on the Hub after a push."""

    ref: str
    tag: str
    commit: str
    uploaded: bool
    """False when the Hub already had this version (nothing was sent)."""


@dataclass
class PushResult:
    """What ``push`` did."""

    repo_id: str
    endpoint: str
    versions: list[PushedVersion] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)
    """Alias → the tag its branch now points at."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {"repo": self.repo_id, "endpoint": self.endpoint, "branches": self.branches,
                "versions": [vars(v) for v in self.versions]}


def _api(endpoint: str | None, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token)


def _token(token: str | None) -> str | None:
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


class _HubCall:
    """Turns huggingface_hub's exceptions into one-line HubErrors, the token never in them."""

    def __init__(self, token: str | None, what: str) -> None:
        self.token, self.what = token, what

    def __enter__(self) -> _HubCall:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, LoradexError):
            return False
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(exc, RevisionNotFoundError):
            raise HubNotFoundError(redact(f"{self.what}: revision not found", self.token)) from None
        if isinstance(exc, RepositoryNotFoundError):
            raise HubNotFoundError(redact(f"{self.what}: repository not found (or not visible with this token)",
                                          self.token)) from None
        if isinstance(exc, EntryNotFoundError):
            raise HubNotFoundError(redact(f"{self.what}: file not found", self.token)) from None
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            text = {401: "not authorised: log in (`hf auth login`) or set HF_TOKEN",
                    403: "forbidden: this token may not write there"}.get(status, str(exc).splitlines()[0])
        elif _network_fault(exc) is not None:
            root = _network_fault(exc)
            where = f"{first_line(exc).rstrip('.')}: " if root is not exc else ""  # e.g. "Error while uploading 'x' to the Hub."
            text = (f"{where}the Hub could not be reached or stopped answering ({type(root).__name__}: "
                    f"{first_line(root)}); nothing was changed locally, run it again to resume")
        else:
            return False
        raise HubError(redact(f"{self.what}: {text}", self.token)) from None


def _network_fault(exc: BaseException) -> BaseException | None:
    """The connection error behind ``exc`` (itself, or a cause it wraps, as uploads wrap theirs), or None."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, (OSError, ConnectionError)) or type(link).__module__.startswith(("httpx", "httpcore")):
            return link
        link = link.__cause__ or link.__context__
    return None


def redact(text: str, token: str | None) -> str:
    """``text`` with the token (if any) replaced by ``***``."""
    return text.replace(token, "***") if token else text


def git_blob_sha1(path: Path) -> str:
    """The git blob id of a file: sha1 of ``b"blob <size>\\0" + content`` (what the Hub reports for non-LFS files)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return file_digest(path)


# ------------------------------------------------------------------------------------------------ push


def push(registry: Registry, ref: str, *, repo_id: str | None = None, all_versions: bool = False,
         private: bool = False, endpoint: str | None = None, token: str | None = None,
         say: Callable[[str], None] = lambda line: None) -> PushResult:
    """Push ``ref`` (or, with ``all_versions``, every version of its adapter missing on the Hub)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    parsed = names.parse_ref(ref)
    records = registry.versions(parsed.name) if all_versions else [registry.resolve(ref)]
    token = _token(token)
    api = _api(endpoint, token)
    with _HubCall(token, "push"):
        if repo_id is None:
            if not token:
                raise ConfigError("name the repo (--repo ORG/REPO), or log in (`hf auth login`) to push to yours")
            repo_id = f"{api.whoami()['name']}/{parsed.name}"
    if not _HUB_REF.match(repo_id) or "@" in repo_id:
        raise ConfigError(f"--repo {repo_id!r} is not a Hub repo id (ORG/REPO)")
    result = PushResult(repo_id=repo_id, endpoint=api.endpoint)
    with _HubCall(token, f"push to {repo_id}"):
        api.create_repo(repo_id, private=private, exist_ok=True)
        refs = api.list_repo_refs(repo_id)
        tags = {t.name: t.target_commit for t in refs.tags}
        branches = {b.name: b.target_commit for b in refs.branches}
        for record in records:
            tag = f"v{record.version}"
            if tag in tags:
                _check_same(api, repo_id, tag, registry, record)
                result.versions.append(PushedVersion(record.ref, tag, tags[tag], uploaded=False))
                say(f"{repo_id}@{tag} is already there ({record.ref}); nothing sent")
                continue
            folder = registry.materialize(record)
            with scratch_folder("push") as scratch:
                files = _staged_files(folder, record, Path(scratch), repo_id=repo_id, tag=tag,
                                      lineage=registry.lineage(record).lines(bullet="from "))
                remote = set(api.list_repo_files(repo_id, revision="main")) if "main" in branches else set()
                operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
                              for name, path in sorted(files.items())]
                operations += [CommitOperationDelete(path_in_repo=name) for name in sorted(remote - set(files))
                               if name != ".gitattributes"]
                commit = api.create_commit(repo_id, operations=operations, commit_message=f"{record.ref} as {tag}",
                                           commit_description=f"Pushed by loradex from {record.ref}.",
                                           revision="main")
            api.create_tag(repo_id, tag=tag, revision=commit.oid, tag_message=f"loradex {record.ref}")
            tags[tag] = commit.oid
            branches["main"] = commit.oid
            result.versions.append(PushedVersion(record.ref, tag, commit.oid, uploaded=True))
            say(f"pushed {record.ref} to {repo_id}@{tag} ({commit.oid[:12]})")
        for alias, version in registry.aliases_of(parsed.name).items():
            tag = f"v{version}"
            if tag not in tags or branches.get(alias) == tags[tag]:
                continue
            if alias in branches:  # aliases move: the branch follows
                api.delete_branch(repo_id, branch=alias)
            api.create_branch(repo_id, branch=alias, revision=tags[tag])
            result.branches[alias] = tag
            say(f"{repo_id}@{alias} -> {tag}")
    return result




def _staged_files(folder: Path, record: VersionRecord, scratch: Path, *, repo_id: str, tag: str,
                  lineage: list[str]) -> dict[str, Path]:
    """The files a pushed version consists of: the version's own, its Hub card, and the hash manifest."""
    files = {name: folder / name for name in record.files if name != "README.md"}
    card = scratch / "README.md"
    card.write_text(model_card(record, repo_id=repo_id, tag=tag, lineage=lineage), encoding="utf-8")
    files["README.md"] = card
    manifest = scratch / FILES_MANIFEST
    manifest.write_text(json.dumps({"ref": record.ref, "files": {
        name: {"sha256": sha256(path), "size": path.stat().st_size} for name, path in sorted(files.items())}},
        indent=2, sort_keys=True) + "\n", encoding="utf-8")
    files[FILES_MANIFEST] = manifest
    return files


def _check_same(api: Any, repo_id: str, tag: str, registry: Registry, record: VersionRecord) -> None:
    """Refuse to call a version "already there" if the Hub's tag holds other files under that number."""
    from huggingface_hub.hf_api import RepoFile

    remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=tag, recursive=True) if isinstance(f, RepoFile)}
    folder = registry.materialize(record)
    for name in record.files:
        if name == "README.md":
            continue
        entry = remote.get(name)
        local = folder / name
        same = entry is not None and (entry.lfs.sha256 == sha256(local) if entry.lfs else
                                      entry.blob_id == git_blob_sha1(local))
        if not same:
            raise HubError(f"{repo_id}@{tag} exists but holds another {name} than {record.ref}; "
                           "push to another repo (--repo) or remove that tag there")


# ------------------------------------------------------------------------------------------------ pull


def pull(registry: Registry, ref: str, *, name: str | None = None, endpoint: str | None = None,
         token: str | None = None, task: str | None = None, say: Callable[[str], None] = lambda line: None
         ) -> VersionRecord:
    """Download ``org/repo[@rev]`` and register it (once: a commit pulled before is reused)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.hf_api import RepoFile

    repo_id, revision = parse_hub_ref(ref)
    token = _token(token)
    api = _api(endpoint, token)
    local_name = names.validate_name(name) if name else names.slugify(repo_id.split("/", 1)[1])
    with _HubCall(token, f"pull {repo_id}@{revision}"):
        info = api.model_info(repo_id, revision=revision)
        commit = info.sha
        known = _already_pulled(registry, api.endpoint, repo_id, commit)
        if known is not None:
            say(f"{repo_id}@{revision} is {known.ref} already")
            return known
        remote = {f.path: f for f in api.list_repo_tree(repo_id, revision=commit, recursive=True)
                  if isinstance(f, RepoFile)}
        cached = Path(snapshot_download(repo_id, revision=commit, endpoint=api.endpoint, token=token))
    with scratch_folder("pull") as scratch:
        folder = Path(scratch) / local_name
        folder.mkdir()
        for path in sorted(remote):
            if path == ".gitattributes" or "/" in path:
                continue
            source = cached / path
            shutil.copyfile(source.resolve(), folder / path)  # the cache holds links; the registry takes files
            entry = remote[path]
            got = sha256(folder / path) if entry.lfs else git_blob_sha1(folder / path)
            expected = entry.lfs.sha256 if entry.lfs else entry.blob_id
            if got != expected:
                _forget_cached(source)  # else the bad copy would be served from the cache on every retry
                raise HubError(f"{path} of {repo_id}@{revision} does not match the hash the Hub reports "
                               f"({got[:12]}… instead of {expected[:12]}…); nothing was registered, and the "
                               "bad copy was dropped from the download cache")
        _check_manifest(folder, repo_id, revision)
        origin = {"endpoint": api.endpoint, "repo": repo_id, "revision": revision, "commit": commit}
        if (folder / SPEC_FILE).is_file():
            from loradex.core.artifact import read_spec

            task = read_spec(folder).tasks[0]
        elif not task:
            raise ConfigError(f"{repo_id} is a plain PEFT adapter (no loradex.json): say its task with --task")
        # stored as `adapters import` stores a folder: one path, one set of checks, each made once
        record = registry.import_folder(folder, task=task, name=local_name, kind="pulled", args={"origin": origin})
    say(f"pulled {repo_id}@{revision} ({commit[:12]}) as {record.ref}")
    return record


def _forget_cached(link: Path) -> None:
    """Remove a file of the huggingface_hub cache (the snapshot's link and the blob it points at)."""
    blob = link.resolve()
    for path in (link, blob):
        try:
            path.unlink()
        except OSError:
            pass


def _check_manifest(folder: Path, repo_id: str, revision: str) -> None:
    path = folder / FILES_MANIFEST
    if not path.is_file():
        return
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise HubError(f"{FILES_MANIFEST} of {repo_id}@{revision} is not readable; nothing was registered") from None
    for name, entry in listed.items():
        local = folder / name
        if not local.is_file() or sha256(local) != entry.get("sha256"):
            raise HubError(f"{name} of {repo_id}@{revision} does not match {FILES_MANIFEST}; nothing was registered")
    path.unlink()


def _already_pulled(registry: Registry, endpoint: str, repo_id: str, commit: str) -> VersionRecord | None:
    found = registry.pulled(endpoint=endpoint, repo=repo_id, commit=commit)
    return found[0] if found else None
