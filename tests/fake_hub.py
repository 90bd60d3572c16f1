"""Just enough of the Hugging Face hub's HTTP API, on 127.0.0.1, for the real huggingface_hub client.

    with FakeHub({"owner/repo": {"tiny-Q4_0.gguf": data}}) as hub:
        os.environ["HF_ENDPOINT"] = hub.url

Routes (what hf_hub_download and HfApi.list_repo_files call):
  GET  /api/models/{repo}[/revision/{rev}]   model info: sha and siblings (every file's name)
  GET  /api/models/{repo}/tree/{rev}[/{dir}] the file list (one page; `recursive` honoured)
  HEAD /{repo}/resolve/{rev}/{file}          X-Repo-Commit, ETag, Content-Length: the metadata call
  GET  /{repo}/resolve/{rev}/{file}          the bytes; `Range: bytes=N-` answers 206 (resumed downloads)
Unknown repos and files answer 404 with the hub's X-Error-Code header, which the client turns into
RepositoryNotFoundError / RemoteEntryNotFoundError. `cut_after` makes the first GET of a file drop the
connection after that many bytes, so tests can watch the client resume.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]], cut_after: int | None = None):
        self.repos = repos
        self.cut_after = cut_after
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._cut_done: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo: str) -> str:
        digest = hashlib.sha1(repo.encode())
        for name, data in sorted(self.repos[repo].items()):
            digest.update(name.encode() + hashlib.sha256(data).digest())
        return digest.hexdigest()

    def downloads(self) -> list[tuple[str, str | None]]:
        """(path, Range) of every GET of a file."""
        return [(p, r) for m, p, r in self.requests if m == "GET" and "/resolve/" in p]


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            self._route(body=True)

        def _route(self, body: bool) -> None:
            url = urlsplit(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and (len(parts) == 4 or len(parts) >= 6 and parts[4] in ("revision", "tree")):
                repo, kind, rest = "/".join(parts[2:4]), (parts + ["revision"])[4], parts[6:]
                if repo not in hub.repos:
                    return self._error(404, "RepoNotFound")
                if kind == "revision":
                    return self._json(body, {"id": repo, "sha": hub.commit(repo),
                                             "siblings": [{"rfilename": f} for f in sorted(hub.repos[repo])]})
                return self._json(body, self._tree(repo, "/".join(rest), query.get("recursive") == ["True"]
                                                   or query.get("recursive") == ["true"]))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._file("/".join(parts[:2]), "/".join(parts[4:]), body)
            self._error(404, None)

        def _tree(self, repo: str, folder: str, recursive: bool) -> list[dict]:
            out = []
            for name, data in sorted(hub.repos[repo].items()):
                inside = name[len(folder) + 1:] if folder else name
                if folder and not name.startswith(folder + "/"):
                    continue
                if "/" in inside and not recursive:
                    continue
                entry = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                if name.endswith(".gguf"):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                out.append(entry)
            return out

        def _file(self, repo: str, name: str, body: bool) -> None:
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound")
            data = hub.repos[repo].get(name)
            if data is None:
                return self._error(404, "EntryNotFound", commit=hub.commit(repo))
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes="):-1])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", hub.commit(repo))
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            key = f"{repo}/{name}"
            if hub.cut_after is not None and key not in hub._cut_done:
                hub._cut_done.add(key)
                self.wfile.write(data[start:start + hub.cut_after])
                self.wfile.flush()
                self.close_connection = True  # the client sees a short read and resumes with Range
                return
            self.wfile.write(data[start:])

        def _json(self, body: bool, payload) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if body:
                self.wfile.write(raw)

        def _error(self, status: int, code: str | None, commit: str | None = None) -> None:
            raw = json.dumps({"error": code or "not found"}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

    return Handler
