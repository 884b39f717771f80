"""A small Hugging Face Hub-compatible HTTP server for tests, driven by the real `huggingface_hub` client.

Each Hub repository is a real bare git repository under ``root/repos/<type>s/<namespace>/<name>.git``:
commits, branches and tags are git refs and commit ids are git SHAs. Large files follow git-LFS: the git
blob is the standard pointer text and the bytes live in ``root/lfs/<sha256>``. Nothing else is kept in
memory, so a new server started on the same root serves the same repositories.

Xet is not served: set ``huggingface_hub.constants.HF_HUB_DISABLE_XET = True`` (or ``HF_HUB_DISABLE_XET=1``
before the import) so the client uploads through the legacy LFS batch / PUT / verify protocol.

Not implemented: pull requests (``create_pr``), multipart LFS uploads, ``expand=True`` details
(``lastCommit``, security scans), organisations, gated repos, repo settings and moves, discussions,
listing repos (``list_models``) and every endpoint `HubServer` does not list.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import traceback
from collections import Counter
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_SUFFIXES = (".safetensors", ".bin", ".pt")
REGULAR_FILE_MAX = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
POINTER_RE = re.compile(rb"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
REVISION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
NULL_SHA = "0" * 40

Reply = tuple[int, bytes, dict[str, str]]


class HubError(Exception):
    """An error reply: status, message, and the `X-Error-Code` the client turns into a typed exception."""

    def __init__(self, status: int, message: str, code: str | None = None, *,
                 headers: dict[str, str] | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra or {}


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}


def _hub_date(timestamp: float) -> str:
    """The one date format the client parses: `%Y-%m-%dT%H:%M:%S.%fZ`."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_env(**extra: str) -> dict[str, str]:
    # Drop inherited GIT_* variables (a hook's GIT_INDEX_FILE would point at the project's own index)
    # and ignore user and system config (commit.gpgSign and the like).
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    return {**env, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C", **extra}


def _identity(user: str) -> dict[str, str]:
    email = f"{user}@users.noreply.hub.test"
    return {"GIT_AUTHOR_NAME": user, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": user,
            "GIT_COMMITTER_EMAIL": email}


class GitRepo:
    """One Hub repository: a bare git repository plus a `hub.json` holding its settings."""

    def __init__(self, path: Path, repo_type: str, repo_id: str):
        self.path, self.repo_type, self.repo_id = path, repo_type, repo_id
        self.owner = repo_id.split("/")[0]

    def git(self, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
        """Run git on this repository and return its stdout; failures raise `subprocess.CalledProcessError`."""
        return subprocess.run(["git", f"--git-dir={self.path}", *args], input=stdin, capture_output=True,
                              check=True, env=_git_env(**(env or {}))).stdout

    def exists(self) -> bool:
        """Whether the repository has been created (`hub.json` is written last)."""
        return (self.path / "hub.json").is_file()

    @property
    def settings(self) -> dict:
        """The repository's settings: `private` and `createdAt`."""
        return json.loads((self.path / "hub.json").read_text())

    def resolve(self, revision: str) -> str | None:
        """The commit that a branch, a tag or a full or abbreviated commit id names, or None."""
        if not REVISION_RE.fullmatch(revision) or ".." in revision:
            return None
        names = [f"refs/heads/{revision}", f"refs/tags/{revision}"]
        if re.fullmatch(r"[0-9a-f]{4,40}", revision):
            names.append(revision)
        out = self.git("cat-file", "--batch-check", stdin="".join(f"{name}^{{commit}}\n" for name in names).encode())
        for line in out.decode().splitlines():  # "<sha> commit <size>", or "<name> missing"
            sha, kind, *_ = line.split()
            if kind == "commit":
                return sha
        return None

    def has_ref(self, ref: str) -> bool:
        """Whether `ref` (e.g. ``refs/tags/v1``) exists."""
        command = ["git", f"--git-dir={self.path}", "show-ref", "--verify", "--quiet", ref]
        return subprocess.run(command, env=_git_env()).returncode == 0

    def entries(self, commit: str) -> list[dict]:
        """Every file and folder of `commit` in the Hub's tree format; LFS files carry `lfs`."""
        rows = []
        for record in self.git("ls-tree", "-r", "-t", "-l", "-z", commit).split(b"\0"):
            if record:
                meta, path = record.split(b"\t", 1)
                _, kind, oid, size = meta.decode().split()
                rows.append((kind, oid, size, path.decode()))
        # LFS pointers are small blobs: read those in one `cat-file --batch` to tell LFS files apart.
        small = [oid for kind, oid, size, _ in rows if kind == "blob" and int(size) < 200]
        out = self.git("cat-file", "--batch", stdin="".join(f"{oid}\n" for oid in small).encode()) if small else b""
        pointers = {}
        for oid in small:
            header, out = out.split(b"\n", 1)
            length = int(header.split()[2])
            if match := POINTER_RE.fullmatch(out[:length]):
                pointers[oid] = {"oid": match[1].decode(), "size": int(match[2]), "pointerSize": length}
            out = out[length + 1 :]
        entries = []
        for kind, oid, size, path in rows:
            if kind == "tree":
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": path})
            elif oid in pointers:
                entries.append({"type": "file", "oid": oid, "size": pointers[oid]["size"], "path": path,
                                "lfs": pointers[oid]})
            elif kind == "blob":
                entries.append({"type": "file", "oid": oid, "size": int(size), "path": path})
        return entries

    def files(self, commit: str) -> dict[str, dict]:
        """The files of `commit` by path."""
        return {entry["path"]: entry for entry in self.entries(commit) if entry["type"] == "file"}

    def write_blob(self, data: bytes) -> str:
        """Store `data` as a git blob and return its id."""
        return self.git("hash-object", "-w", "--stdin", stdin=data).decode().strip()

    def commit(self, branch: str, parent: str | None, adds: dict[str, str], deletes: set[str], message: str,
               user: str) -> str:
        """Commit on `branch` the tree of `parent` with `adds` (path -> blob id) and without `deletes`.

        The branch moves only if it still points at `parent` (HTTP 412 otherwise).
        """
        lines = [f"0 {NULL_SHA}\t{path}" for path in deletes]  # mode 0 removes the entry
        lines += [f"100644 {blob}\t{path}" for path, blob in adds.items()]
        with tempfile.TemporaryDirectory() as scratch:
            env = {"GIT_INDEX_FILE": str(Path(scratch) / "index")}
            if parent:
                self.git("read-tree", parent, env=env)
            try:
                self.git("update-index", "--add", "--index-info", stdin="".join(f"{line}\n" for line in lines).encode(),
                         env=env)
            except subprocess.CalledProcessError as err:
                raise HubError(400, f"Invalid commit operations: {err.stderr.decode()}") from err
            tree = self.git("write-tree", env=env).decode().strip()
        parents = ["-p", parent] if parent else []
        commit = self.git("commit-tree", tree, *parents, stdin=message.encode(), env=_identity(user)).decode().strip()
        try:
            self.git("update-ref", f"refs/heads/{branch}", commit, parent or NULL_SHA)
        except subprocess.CalledProcessError as err:
            raise HubError(412, "A commit has happened since. Please refresh and try again.") from err
        return commit

    def refs(self) -> dict[str, list[dict]]:
        """Branches and tags with the commit each points at (annotated tags are peeled)."""
        refs: dict[str, list[dict]] = {"branches": [], "tags": []}
        out = self.git("for-each-ref", "--format=%(refname)%00%(objectname)%00%(*objectname)",
                       "refs/heads", "refs/tags")
        for line in out.decode().splitlines():
            ref, target, peeled = line.split("\0")
            kind = "branches" if ref.startswith("refs/heads/") else "tags"
            refs[kind].append({"name": ref.split("/", 2)[2], "ref": ref, "targetCommit": peeled or target})
        return refs

    def log(self, commit: str) -> list[dict]:
        """The history of `commit`, newest first, in the Hub's format."""
        history = []
        for record in self.git("log", "-z", "--format=%H%x1f%an%x1f%ct%x1f%s%x1f%b", commit).decode().split("\0"):
            if record:
                sha, author, timestamp, title, body = record.split("\x1f")
                history.append({"id": sha, "title": title, "message": body.strip(), "authors": [{"user": author}],
                                "date": _hub_date(int(timestamp))})
        return history


class _Request:
    """What a route sees of a request: method, path (raw and as unquoted segments), query, headers, body, user."""

    def __init__(self, method: str, path: str, query: str, headers: Message, body: bytes):
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.parts = [unquote(part) for part in path.split("/")[1:]]
        self.query = parse_qs(query)
        self.user: str | None = None

    def json(self) -> dict:
        """The body parsed as JSON (HTTP 400 when it is not)."""
        try:
            return json.loads(self.body or b"{}")
        except ValueError as err:
            raise HubError(400, "Request body is not valid JSON") from err


class _Handler(BaseHTTPRequestHandler):
    """Reads each request whole, asks the `HubServer` for a reply and writes it with a Content-Length."""

    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        self.server.hub._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: tests read `HubServer.requests` instead."""

    def _serve(self) -> None:
        if "Transfer-Encoding" in self.headers:  # the client always sends a Content-Length
            self.send_error(411)
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = self.server.hub._handle(self.command, self.path, self.headers, body)
        if reply is None:  # a simulated outage: hang up without a reply
            self.close_connection = True
            return
        status, payload, headers = reply
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


class HubServer:
    """A Hub-compatible server on 127.0.0.1 for tests, used as a context manager.

    ``with HubServer(tmp_path / "hub", tokens={"tok-alice": "alice"}) as hub:`` then give the client
    ``endpoint=hub.endpoint``. Tokens map to user names; a user owns the namespace of the same name.

    Endpoints, for models, datasets and spaces: ``GET /api/whoami-v2``, ``POST /api/repos/create``,
    ``DELETE /api/repos/delete``, ``POST /api/validate-yaml``; under ``/api/{type}s/{repo}``: ``GET`` (info),
    ``GET revision/{rev}``, ``GET tree/{rev}[/{path}]``, ``GET refs``, ``GET commits/{rev}``,
    ``POST paths-info/{rev}``, ``POST preupload/{rev}``, ``POST commit/{rev}``, ``POST``/``DELETE`` ``tag/…``
    and ``branch/…``; ``POST /{repo}.git/info/lfs/objects/batch`` and ``…/verify``, ``PUT`` on the upload
    URLs the batch hands out, and ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (with ``Range``).

    Traffic is recorded in `requests`, `bytes_received` and `bytes_by_kind`; `fail_after_lfs_uploads`
    makes the server go away in the middle of a push; `corrupt_lfs` damages a stored object.
    """

    page_size = 1000
    """Entries per page of tree and commit listings; the rest is reached through a ``Link: rel="next"``."""

    def __init__(self, root: Path, tokens: dict[str, str] | None = None):
        self.root = Path(root)
        self.tokens = dict(tokens or {})
        self.requests: list[tuple[str, str]] = []
        """Every request as (method, path without the query string), in arrival order."""
        self.bytes_received = 0
        """Request body bytes received in all."""
        self.bytes_by_kind: Counter[str] = Counter()
        """Request body bytes by kind: "lfs" (LFS upload PUTs), "commit" (commit NDJSON) and "other"."""
        self.lfs_uploads = 0
        """LFS objects stored through upload PUTs so far."""
        self.fail_after_lfs_uploads: int | None = None
        """Once `lfs_uploads` reaches this number every further LFS upload PUT fails, until set back to None."""
        self.lfs_failure_status: int | None = None
        """How such a PUT fails: None hangs up without a reply (the client retries 5 times, sleeping
        1+2+4+8+8 s in all); a status code is answered (507, say, which the client does not retry)."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._upload_grants: dict[str, str] = {}
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def lfs_bytes_received(self) -> int:
        """Body bytes of LFS upload PUTs, failed and retried ones included."""
        return self.bytes_by_kind["lfs"]

    @property
    def commit_bytes_received(self) -> int:
        """Body bytes of commit requests, which carry the regular files base64-encoded."""
        return self.bytes_by_kind["commit"]

    @property
    def endpoint(self) -> str:
        """The base URL for the client, ``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("HubServer is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubServer:
        """Listen on a free port and serve from a background thread."""
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection, kept-alive ones included."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def repo(self, repo_id: str, repo_type: str = "model") -> GitRepo:
        """The stored repository `repo_id` (it may not exist), e.g. to inspect with ``hub.repo(id).git("log")``."""
        namespace, _, name = repo_id.partition("/")
        if not all(NAME_RE.fullmatch(part) and ".." not in part for part in (namespace, name)):
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return GitRepo(self.root / "repos" / f"{repo_type}s" / namespace / f"{name}.git", repo_type, repo_id)

    def lfs_path(self, oid: str) -> Path:
        """Where the LFS object with this sha256 is stored."""
        return self.root / "lfs" / oid

    def corrupt_lfs(self, oid: str, data: bytes | None = None) -> None:
        """Overwrite a stored LFS object with `data`, or flip its every byte (same size, wrong sha256).

        The server goes on serving it under its original ETag, as a store with bit rot would.
        """
        path = self.lfs_path(oid)
        path.write_bytes(data if data is not None else bytes(byte ^ 0xFF for byte in path.read_bytes()))

    # --- plumbing -------------------------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: Message, body: bytes) -> Reply | None:
        url = urlsplit(raw_path)
        req = _Request(method, url.path, url.query, headers, body)
        is_commit = req.parts[:1] == ["api"] and req.parts[4:5] == ["commit"]
        kind = "lfs" if req.parts[:2] == ["_lfs", "upload"] else "commit" if is_commit else "other"
        with self._lock:
            self.requests.append((method, url.path))
            self.bytes_received += len(body)
            self.bytes_by_kind[kind] += len(body)
        try:
            if authorization := headers.get("Authorization"):
                req.user = self.tokens.get(authorization.removeprefix("Bearer ").strip())
                if req.user is None:
                    raise HubError(401, "Invalid credentials in Authorization header")
            return self._route(req)
        except HubError as err:
            error = err
        except Exception as err:  # a bug or a git failure: answer it rather than hang up
            traceback.print_exc()
            error = HubError(500, f"Internal error: {err!r}")
        # One line of ASCII: a line break in a header breaks HTTP framing, and headers are latin-1.
        message = " ".join(error.message.split()).encode("ascii", "backslashreplace").decode()
        headers = {**error.headers, "X-Error-Message": message}
        if error.code:
            headers["X-Error-Code"] = error.code
        return _json({"error": error.message, **error.extra}, error.status, headers)

    def _route(self, req: _Request) -> Reply | None:
        parts, method = req.parts, req.method
        if parts[:1] == ["api"]:
            return self._route_api(req, parts[1:])
        if parts[:2] == ["_lfs", "upload"] and len(parts) == 3 and method == "PUT":
            return self._lfs_upload(req, parts[2])
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(parts[0], "model")
        rest = parts[1:] if repo_type != "model" else parts
        if len(rest) == 6 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"] and method == "POST":
            repo = self._open(req, repo_type, f"{rest[0]}/{rest[1].removesuffix('.git')}", write=True)
            if rest[5] == "batch":
                return self._lfs_batch(req, repo)
            if rest[5] == "verify":
                return self._lfs_verify(req)
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(req, self._open(req, repo_type, f"{rest[0]}/{rest[1]}"), rest[3], "/".join(rest[4:]))
        raise HubError(404, "Not Found")

    def _route_api(self, req: _Request, parts: list[str]) -> Reply:
        method = req.method
        if parts == ["whoami-v2"] and method == "GET":
            return self._whoami(req)
        if parts == ["repos", "create"] and method == "POST":
            return self._create_repo(req)
        if parts == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo(req)
        if parts == ["validate-yaml"] and method == "POST":
            return _json({"errors": [], "warnings": []})
        if len(parts) < 3 or parts[0] not in REPO_TYPES:
            raise HubError(404, "Not Found")
        repo_type, repo_id = REPO_TYPES[parts[0]], f"{parts[1]}/{parts[2]}"
        action, args = (parts[3], parts[4:]) if len(parts) > 3 else (None, [])
        reads = {(None, 0): self._info, ("revision", 1): self._info, ("refs", 0): self._refs,
                 ("commits", 1): self._commits}
        writes = {("POST", "preupload"): self._preupload, ("POST", "commit"): self._commit,
                  ("POST", "tag"): self._create_tag, ("POST", "branch"): self._create_branch,
                  ("DELETE", "tag"): lambda req, repo, tag: self._delete_ref(repo, f"refs/tags/{tag}"),
                  ("DELETE", "branch"): lambda req, repo, branch: self._delete_ref(repo, f"refs/heads/{branch}")}
        if method == "GET" and (action, len(args)) in reads:
            return reads[action, len(args)](req, self._open(req, repo_type, repo_id), *args)
        if method == "GET" and action == "tree" and args:
            return self._tree(req, self._open(req, repo_type, repo_id), args[0], "/".join(args[1:]))
        if method == "POST" and action == "paths-info" and len(args) == 1:
            return self._paths_info(req, self._open(req, repo_type, repo_id), args[0])
        if (method, action) in writes and len(args) == 1:
            return writes[method, action](req, self._open(req, repo_type, repo_id, write=True), args[0])
        raise HubError(404, "Not Found")

    def _open(self, req: _Request, repo_type: str, repo_id: str, write: bool = False) -> GitRepo:
        """The repository if `req.user` may read it (and write it, with `write`); else HTTP 401, 403 or 404."""
        if write and req.user is None:
            raise HubError(401, "You must be authenticated to write to a repository")
        repo = self.repo(repo_id, repo_type)
        if not repo.exists() or (repo.settings["private"] and req.user != repo.owner):
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        if write and req.user != repo.owner:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit_of(self, repo: GitRepo, revision: str) -> str:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _url(self, repo: GitRepo, *parts: str) -> str:
        return "/".join([self.endpoint, URL_PREFIXES[repo.repo_type] + repo.repo_id, *parts])

    # --- account and repositories ---------------------------------------------------------------------

    def _whoami(self, req: _Request) -> Reply:
        if req.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return _json({"type": "user", "name": req.user, "fullname": req.user, "orgs": [],
                      "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def _repo_from_body(self, req: _Request) -> GitRepo:
        if req.user is None:
            raise HubError(401, "You must be authenticated to create or delete a repository")
        body = req.json()
        namespace, name, repo_type = body.get("organization") or req.user, body.get("name"), body.get("type") or "model"
        if repo_type not in URL_PREFIXES or not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise HubError(400, "Invalid repository name or type")
        if namespace != req.user:
            raise HubError(403, f"You don't have the rights to manage repositories in the namespace {namespace}")
        return self.repo(f"{namespace}/{name}", repo_type)

    def _create_repo(self, req: _Request) -> Reply:
        repo, body = self._repo_from_body(req), req.json()
        with self._write_lock:
            if repo.exists():  # the client's exist_ok reads `url` from the 409
                raise HubError(409, f"You already created this {repo.repo_type} repo", extra={"url": self._url(repo)})
            shutil.rmtree(repo.path, ignore_errors=True)  # what a crashed creation may have left
            repo.path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["git", "init", "--bare", "--quiet", "-b", "main", str(repo.path)], check=True,
                           env=_git_env())
            # Like the Hub, a new repository starts with one commit holding a .gitattributes.
            blob = repo.write_blob(GITATTRIBUTES.encode())
            repo.commit("main", None, {".gitattributes": blob}, set(), "initial commit", req.user)
            settings = {"private": body.get("visibility") == "private" or body.get("private") is True,
                        "createdAt": _hub_date(datetime.now(timezone.utc).timestamp())}
            (repo.path / "hub.json").write_text(json.dumps(settings))
        return _json({"url": self._url(repo), "name": repo.repo_id, "id": repo.repo_id})

    def _delete_repo(self, req: _Request) -> Reply:
        repo = self._repo_from_body(req)
        with self._write_lock:
            if not repo.exists():
                raise HubError(404, f"Repository not found: {repo.repo_id}", "RepoNotFound")
            shutil.rmtree(repo.path)
        return _json({})

    # --- reading --------------------------------------------------------------------------------------

    def _info(self, req: _Request, repo: GitRepo, revision: str = "main") -> Reply:
        commit = self._commit_of(repo, revision)
        with_blobs = req.query.get("blobs", [""])[0] == "true"
        siblings = []
        for entry in repo.files(commit).values():
            sibling = {"rfilename": entry["path"]}
            if with_blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if lfs := entry.get("lfs"):
                    sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        settings = repo.settings
        last_modified = _hub_date(int(repo.git("show", "-s", "--format=%ct", commit)))
        return _json({"id": repo.repo_id, "author": repo.owner, "sha": commit, "private": settings["private"],
                      "lastModified": last_modified, "createdAt": settings["createdAt"], "gated": False,
                      "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings})

    def _paged(self, req: _Request, items: list[dict]) -> Reply:
        start = int(req.query.get("cursor", ["0"])[0])
        headers = {}
        if start + self.page_size < len(items):
            query = {name: values[0] for name, values in req.query.items()} | {"cursor": start + self.page_size}
            headers["Link"] = f'<{self.endpoint}{req.path}?{urlencode(query)}>; rel="next"'
        return _json(items[start : start + self.page_size], headers=headers)

    def _tree(self, req: _Request, repo: GitRepo, revision: str, path: str) -> Reply:
        commit = self._commit_of(repo, revision)
        entries = repo.entries(commit)
        if path and not any(entry["path"] == path and entry["type"] == "directory" for entry in entries):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound",
                           headers={"X-Repo-Commit": commit})
        prefix = f"{path}/" if path else ""
        recursive = req.query.get("recursive", [""])[0] == "true"
        return self._paged(req, [entry for entry in entries if entry["path"].startswith(prefix)
                                 and (recursive or "/" not in entry["path"][len(prefix):])])

    def _paths_info(self, req: _Request, repo: GitRepo, revision: str) -> Reply:
        by_path = {entry["path"]: entry for entry in repo.entries(self._commit_of(repo, revision))}
        paths = parse_qs(req.body.decode()).get("paths", [])  # a form, not JSON
        return _json([by_path[path] for path in dict.fromkeys(paths) if path in by_path])

    def _refs(self, req: _Request, repo: GitRepo) -> Reply:
        return _json({**repo.refs(), "converts": [], "pullRequests": []})

    def _commits(self, req: _Request, repo: GitRepo, revision: str) -> Reply:
        return self._paged(req, repo.log(self._commit_of(repo, revision)))

    def _resolve(self, req: _Request, repo: GitRepo, revision: str, path: str) -> Reply:
        commit = self._commit_of(repo, revision)
        entry = repo.files(commit).get(path)
        if entry is None:  # the client caches "no such file at this commit" from X-Repo-Commit
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound",
                           headers={"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if lfs := entry.get("lfs"):
            headers.update({"ETag": f'"{lfs["oid"]}"', "X-Linked-Etag": f'"{lfs["oid"]}"',
                            "X-Linked-Size": str(lfs["size"])})
            data = self.lfs_path(lfs["oid"]).read_bytes()
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
            data = repo.git("cat-file", "blob", entry["oid"])
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", req.headers.get("Range") or "")
        if match is None or match.groups() == ("", ""):
            return 200, data, headers
        first, last = match.groups()
        size = len(data)
        start = max(size - int(last), 0) if first == "" else int(first)
        end = min(int(last), size - 1) if first and last else size - 1
        if start > end:
            return 416, b"", {**headers, "Content-Range": f"bytes */{size}"}
        return 206, data[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}

    # --- writing --------------------------------------------------------------------------------------

    def _stored_size(self, oid: object) -> int | None:
        """The size of the stored LFS object `oid`; None when absent or when `oid` is no sha256."""
        if not isinstance(oid, str) or not SHA256_RE.fullmatch(oid) or not self.lfs_path(oid).is_file():
            return None
        return self.lfs_path(oid).stat().st_size

    def _preupload(self, req: _Request, repo: GitRepo, revision: str) -> Reply:
        commit = self._commit_of(repo, revision)
        remote = repo.files(commit)
        answers = []
        for file in req.json().get("files", []):
            path, size = file.get("path"), file.get("size", 0)
            binary = b"\0" in base64.b64decode(file.get("sample", ""))
            lfs = binary or size > REGULAR_FILE_MAX or str(path).endswith(LFS_SUFFIXES)
            answer = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if entry := remote.get(path):
                # The client leaves out a file whose oid equals its own: sha256 for LFS, git blob id otherwise.
                answer["oid"] = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
            answers.append(answer)
        return _json({"files": answers, "commitOid": commit})

    def _lfs_batch(self, req: _Request, repo: GitRepo) -> Reply:
        objects = []
        for obj in req.json().get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and SHA256_RE.fullmatch(oid) and isinstance(size, int) and size >= 0):
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
            elif self._stored_size(oid) == size:
                objects.append({"oid": oid, "size": size})  # no actions: stored already, nothing to send
            else:
                # Like a presigned S3 URL: the client PUTs there without its token.
                grant = secrets.token_urlsafe(16)
                with self._lock:
                    self._upload_grants[grant] = oid
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                    "upload": {"href": f"{self.endpoint}/_lfs/upload/{oid}?{urlencode({'grant': grant})}"},
                    "verify": {"href": self._url(repo) + ".git/info/lfs/objects/verify"},
                }})
        body = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()
        return 200, body, {"Content-Type": "application/vnd.git-lfs+json"}

    def _lfs_upload(self, req: _Request, oid: str) -> Reply | None:
        with self._lock:
            granted = self._upload_grants.get(req.query.get("grant", [""])[0])
        if granted != oid:
            raise HubError(403, "Invalid or expired upload URL")
        intact = hashlib.sha256(req.body).hexdigest() == oid
        with self._lock:  # check and count under one lock, so exactly N uploads get through
            failing = self.fail_after_lfs_uploads is not None and self.lfs_uploads >= self.fail_after_lfs_uploads
            if intact and not failing:
                partial = self.lfs_path(oid).with_name(f"{oid}.{secrets.token_hex(4)}.partial")
                partial.write_bytes(req.body)
                partial.replace(self.lfs_path(oid))
                self.lfs_uploads += 1
        if failing and self.lfs_failure_status is None:
            return None
        if failing:
            raise HubError(self.lfs_failure_status, "Storage is unavailable")
        if not intact:
            raise HubError(400, "Uploaded content does not match its sha256")
        return 200, b"", {}

    def _lfs_verify(self, req: _Request) -> Reply:
        body = req.json()
        if self._stored_size(body.get("oid")) != body.get("size"):
            raise HubError(404, "Object not found")
        return _json({})

    @staticmethod
    def _checked_path(path: object) -> str:
        parts = path.split("/") if isinstance(path, str) and "\n" not in path else [""]
        if any(part in ("", ".", "..") for part in parts) or parts[0] == ".git":
            raise HubError(400, f"Invalid path in repo: {path!r}")
        return path

    def _commit(self, req: _Request, repo: GitRepo, branch: str) -> Reply:
        if req.query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by this test server")
        try:
            items = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, "The commit payload is not valid NDJSON") from err
        header = next((item.get("value", {}) for item in items if item.get("key") == "header"), {})
        if not header.get("summary"):
            raise HubError(400, "A commit header with a summary is required")
        adds: dict[str, str] = {}
        deletions: list[tuple[str, str]] = []
        for item in items:
            key, value = item.get("key"), item.get("value", {})
            if key == "file":
                content = base64.b64decode(value.get("content", ""))
                adds[self._checked_path(value.get("path"))] = repo.write_blob(content)
            elif key == "lfsFile":
                oid, size = value.get("oid"), self._stored_size(value.get("oid"))
                if size is None or value.get("size", size) != size:
                    raise HubError(400, f"LFS object {oid} has not been uploaded")
                pointer = LFS_POINTER.format(oid=oid, size=size).encode()
                adds[self._checked_path(value.get("path"))] = repo.write_blob(pointer)
            elif key in ("deletedFile", "deletedFolder"):
                deletions.append((key, self._checked_path(str(value.get("path")).rstrip("/"))))
            elif key != "header":
                raise HubError(400, f"Unknown commit operation: {key!r}")
        with self._write_lock:
            if not repo.has_ref(f"refs/heads/{branch}"):
                raise HubError(404, f"Branch not found: {branch}", "RevisionNotFound")
            head = repo.resolve(branch)
            if (parent := header.get("parentCommit")) and not head.startswith(parent.lower()):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files, deletes = repo.files(head), set()
            for key, path in deletions:
                gone = {path} & files.keys() if key == "deletedFile" else {p for p in files if p.startswith(f"{path}/")}
                if not gone:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound",
                                   headers={"X-Repo-Commit": head})
                deletes |= gone
            message = header["summary"] + (f"\n\n{header['description']}" if header.get("description") else "")
            commit = repo.commit(branch, head, adds, deletes, message, req.user)
        return _json({"success": True, "commitOid": commit, "commitUrl": self._url(repo, "commit", commit),
                      "commitMessage": header["summary"], "hookOutput": ""})

    @staticmethod
    def _ref(kind: str, name: object) -> str:
        """``refs/<kind>/<name>`` when git accepts it as a ref name (HTTP 400 otherwise)."""
        ref = f"refs/{kind}/{name}"
        if not isinstance(name, str) or not REVISION_RE.fullmatch(name) or \
                subprocess.run(["git", "check-ref-format", ref], env=_git_env()).returncode != 0:
            raise HubError(400, f"Invalid name: {name!r}")
        return ref

    def _create_tag(self, req: _Request, repo: GitRepo, revision: str) -> Reply:
        body = req.json()
        ref = self._ref("tags", body.get("tag"))
        with self._write_lock:
            commit = self._commit_of(repo, revision)
            if repo.has_ref(ref):
                raise HubError(409, f"Tag already exists: {body['tag']}")
            annotation = ["-a", "-m", body["message"]] if body.get("message") else []
            repo.git("tag", *annotation, body["tag"], commit, env=_identity(req.user))
        return _json({})

    def _create_branch(self, req: _Request, repo: GitRepo, branch: str) -> Reply:
        ref = self._ref("heads", branch)
        with self._write_lock:
            commit = self._commit_of(repo, req.json().get("startingPoint") or "main")
            if repo.has_ref(ref):
                raise HubError(409, f"Branch already exists: {branch}")
            repo.git("update-ref", ref, commit, NULL_SHA)
        return _json({})

    def _delete_ref(self, repo: GitRepo, ref: str) -> Reply:
        if ref == "refs/heads/main":
            raise HubError(403, "The default branch cannot be deleted")
        with self._write_lock:
            if not repo.has_ref(ref):
                raise HubError(404, f"Revision not found: {ref}", "RevisionNotFound")
            repo.git("update-ref", "-d", ref)
        return _json({})
