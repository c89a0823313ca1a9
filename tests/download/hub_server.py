"""A local stand-in for the Hugging Face Hub endpoints huggingface_hub uses to download a repo.

Implements (aiohttp, in a background thread):

* ``GET /api/models/<owner>/<name>[/revision/<rev>][?blobs=true]``: repo info with ``sha`` and
  ``siblings`` (``size``, ``blobId``, ``lfs.{sha256,size,pointerSize}`` when ``blobs``);
  unknown repos answer 404 ``X-Error-Code: RepoNotFound``.
* ``HEAD``/``GET /<owner>/<name>/resolve/<rev>/<path>``: ``X-Repo-Commit``, ``ETag`` (LFS: the
  sha256, else the git blob id), ``X-Linked-Etag``/``X-Linked-Size`` for LFS files,
  ``Content-Length``, ``Accept-Ranges``; ``Range: bytes=N-`` answers 206 with ``Content-Range``.

Test controls: ``drop_after[path] = n`` cuts the connection once after ``n`` body bytes (a dropped
transfer), ``corrupt[path] = bytes`` serves other content than the metadata describes,
``stall[path] = s`` waits ``s`` seconds before answering (``INFO`` for the repo-info request),
``stall_body[path] = (n, s)`` waits ``s`` seconds at byte ``n`` of the file, in every request
that reaches it (a Hub that stops sending). File names are listed as given, hostile ones included,
and a hostile name is also served at the URL a client makes of it (``.../resolve/<rev>/../x.json``
arrives as ``.../resolve/x.json``), as a malicious endpoint would. Every request is logged in
``requests`` as ``(method, path, Range header)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import posixpath
import threading
from dataclasses import dataclass, field

from aiohttp import web

LFS_MIN = 1024  # files at least this big are "LFS" in the fixture repos
INFO = "<info>"  # stall key of the repo-info request


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()  # noqa: S324  (git's definition)


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"

    def is_lfs(self, path: str) -> bool:
        return len(self.files[path]) >= LFS_MIN

    def sibling(self, path: str) -> dict[str, object]:
        data = self.files[path]
        s: dict[str, object] = {"rfilename": path, "size": len(data), "blobId": git_blob_id(data)}
        if self.is_lfs(path):
            s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            s["size"] = 134  # the Hub reports the pointer's size as the git size of LFS files
        return s


@dataclass
class HubServer:
    repos: dict[str, FakeRepo]
    drop_after: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, bytes] = field(default_factory=dict)
    stall: dict[str, float] = field(default_factory=dict)
    stall_body: dict[str, tuple[int, float]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less when the server stops (so a stalled request never delays ``stop``)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- handlers ------------------------------------------------------------------------

    async def _info(self, request: web.Request) -> web.StreamResponse:
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        self.requests.append((request.method, request.path, None))
        if INFO in self.stall:
            await self._pause(self.stall[INFO])
        repo = self.repos.get(repo_id)
        if repo is None:
            return web.json_response({"error": "Repository not found"}, status=404, headers={"X-Error-Code": "RepoNotFound"})
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings = [repo.sibling(p) if blobs else {"rfilename": p} for p in sorted(repo.files)]
        return web.json_response(
            {"_id": "x", "id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False, "siblings": siblings}
        )

    def _hostile_match(self, url_path: str) -> tuple[str, str] | None:
        """(repo id, file name) of a listed name that is not a plain path (``../x.json``) and whose
        download URL, once the client removed dot segments, is ``url_path``: a hostile endpoint
        answers those requests too."""
        for repo in self.repos.values():
            for name in repo.files:
                url = posixpath.normpath(f"/{repo.repo_id}/resolve/{repo.commit}/{name}")
                if url != f"/{repo.repo_id}/resolve/{repo.commit}/{name}" and url == posixpath.normpath(url_path):
                    return repo.repo_id, name
        return None

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo_id = f"{request.match_info.get('owner')}/{request.match_info.get('name')}"
        path = request.match_info.get("path", "")
        rng = request.headers.get("Range")
        self.requests.append((request.method, request.path, rng))
        hostile = self._hostile_match(request.path)
        if hostile is not None:
            repo_id, path = hostile
        if path in self.stall:
            await self._pause(self.stall[path])
        repo = self.repos.get(repo_id)
        if repo is None or path not in repo.files:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound" if repo else "RepoNotFound"})
        data = self.corrupt.get(path, repo.files[path])
        meta = repo.files[path]
        etag = hashlib.sha256(meta).hexdigest() if repo.is_lfs(path) else git_blob_id(meta)
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if repo.is_lfs(path):
            headers["X-Linked-Etag"] = f'"{etag}"'
            headers["X-Linked-Size"] = str(len(meta))
        start = 0
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
        body = data[start:]
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(data))
            return web.Response(status=200, headers=headers)
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        resp = web.StreamResponse(status=status, headers=headers)
        await resp.prepare(request)
        cut = self.drop_after.pop(path, None)
        if cut is not None and cut < len(body):
            await resp.write(body[:cut])
            await asyncio.sleep(0.05)
            request.transport.close()  # the connection drops mid-body
            return resp
        pause = self.stall_body.get(path)  # every request that reaches the offset stalls there, resumes too
        if pause is not None and start <= pause[0] < len(data):
            await resp.write(data[start : pause[0]])
            await self._pause(pause[1])  # the Hub stops sending mid-body
            body = data[pause[0] :]
        await resp.write(body)
        await resp.write_eof()
        return resp

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> HubServer:
        app = web.Application()
        app.router.add_get("/api/models/{owner}/{name}", self._info)
        app.router.add_get("/api/models/{owner}/{name}/revision/{rev}", self._info)
        app.router.add_route("HEAD", "/{owner}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        app.router.add_get("/{owner}/{name}/resolve/{rev}/{path:.+}", self._resolve, allow_head=False)
        # anything else: only a hostile name's normalized URL is answered (else 404)
        app.router.add_route("HEAD", "/{tail:.*}", self._resolve)
        app.router.add_get("/{tail:.*}", self._resolve, allow_head=False)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._stopping = asyncio.Event()
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self._stopping.set()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
