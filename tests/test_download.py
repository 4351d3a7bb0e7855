"""The downloader end to end against a local HTTP server (127.0.0.1 only, started per test, stops by itself)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from bench.data.download import (
    DownloadError,
    NetworkError,
    UnverifiedDownloadWarning,
    extract_members,
    fetch,
    http_download,
)
from bench.data.locks import LOCK_NAME, ShaLock
from bench.data.manifest import ManifestDataset, load_manifest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileServer:
    """Serves ``files`` (path → bytes) with Range support. Paths in ``drop_once`` are cut after
    ``cut_at`` body bytes the first time they are requested. Every request is logged as
    (path, Range header or None). The serving loop is bounded by a deadline and a request count."""

    def __init__(self, files: dict[str, bytes], drop_once=(), cut_at: int = 50_000, ignore_range: bool = False,
                 max_requests: int = 60, deadline_s: float = 60.0):
        self.files = dict(files)
        self.drop_once = set(drop_once)
        self.cut_at = cut_at
        self.ignore_range = ignore_range
        self.log: list[tuple[str, str | None]] = []
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                owner.log.append((self.path, self.headers.get("Range")))
                body = owner.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                range_header = self.headers.get("Range")
                if range_header and not owner.ignore_range:
                    start = int(range_header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in owner.drop_once:
                    owner.drop_once.discard(self.path)
                    self.wfile.write(body[start:start + owner.cut_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 0.2
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        deadline = time.monotonic() + deadline_s

        def serve():
            for _ in range(max_requests * 50):  # idle polls included; bounded either way
                if self.stop.is_set() or time.monotonic() > deadline:
                    break
                self.server.handle_request()
            self.server.server_close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


@pytest.fixture
def serve(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    servers = []

    def start(files, **kwargs) -> FileServer:
        server = FileServer(files, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def payload(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7919 + seed * 31 + (i >> 8)) % 251 for i in range(size))


def make_tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        dirs = sorted({str(Path(name).parent) for name in members})
        for directory in dirs:
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_manifest(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def entry(image_id: str, file: str, **source) -> dict:
    return {"id": image_id, "file": file, **source, "source_prompt": "a photo of a cat",
            "target_prompts": ["a photo of a dog"]}


# ------------------------------------------------------------------------------------------------


def test_resume_after_cut_connection(serve, tmp_path):
    data = payload(200_000)
    server = serve({"/big.bin": data}, drop_once={"/big.bin"}, cut_at=64_000)
    dest = tmp_path / "cache" / "big.bin"
    got = http_download(f"{server.url}/big.bin", dest, sha(data), retries=2, backoff=0, timeout=5)
    assert got == sha(data)
    assert dest.read_bytes() == data
    assert not dest.with_name("big.bin.part").exists()
    # first request without Range, cut after 64000 bytes; the second resumes exactly there
    assert server.log == [("/big.bin", None), ("/big.bin", "bytes=64000-")]


def test_rerun_resumes_a_partial_file(serve, tmp_path):
    data = payload(30_000, seed=1)
    server = serve({"/f.bin": data})
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(data[:12_345])
    http_download(f"{server.url}/f.bin", dest, sha(data), retries=0, backoff=0, timeout=5)
    assert dest.read_bytes() == data
    assert server.log == [("/f.bin", "bytes=12345-")]


def test_server_ignoring_range_restarts_from_zero(serve, tmp_path):
    data = payload(30_000, seed=2)
    server = serve({"/f.bin": data}, ignore_range=True)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"garbage that must not be kept")
    http_download(f"{server.url}/f.bin", dest, sha(data), retries=0, backoff=0, timeout=5)
    assert dest.read_bytes() == data


def test_sha_mismatch_errors_and_leaves_nothing(serve, tmp_path):
    data = payload(10_000, seed=3)
    server = serve({"/cats/c.png": data})
    wrong = "0" * 64
    manifest = load_manifest(write_manifest(tmp_path / "m.yaml", {
        "name": "toy", "version": "1",
        "images": [entry("c", "cats/c.png", url=f"{server.url}/cats/c.png", sha256=wrong)]}))
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as err:
        fetch(manifest, cache, retries=0, backoff=0, timeout=5)
    message = str(err.value)
    assert f"{server.url}/cats/c.png" in message and wrong in message and sha(data) in message
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_tar_members_extracted_only_when_listed(serve, tmp_path):
    members = {"set/n01/a_1.jpg": payload(5_000, 4), "set/n01/b_2.jpg": payload(6_000, 5),
               "set/n02/c_3.jpg": payload(7_000, 6)}
    archive = make_tar(members)
    server = serve({"/set.tar": archive})
    manifest = load_manifest(write_manifest(tmp_path / "m.yaml", {
        "name": "toytar", "version": "1",
        "archives": {"set": {"url": f"{server.url}/set.tar", "sha256": None}},
        "images": [
            entry("a/a_1", "a/a_1.jpg", archive="set", member="set/n01/a_1.jpg", sha256=sha(members["set/n01/a_1.jpg"])),
            entry("c/c_3", "c/c_3.jpg", archive="set", member="set/n02/c_3.jpg", sha256=None),
        ]}))
    cache = tmp_path / "cache"
    with pytest.warns(UnverifiedDownloadWarning):
        report = fetch(manifest, cache, retries=0, backoff=0, timeout=5)
    assert (cache / "toytar/a/a_1.jpg").read_bytes() == members["set/n01/a_1.jpg"]
    assert (cache / "toytar/c/c_3.jpg").read_bytes() == members["set/n02/c_3.jpg"]
    # the unlisted member is nowhere in the cache (only the archive itself holds it)
    files = {p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file()}
    assert files == {"toytar/a/a_1.jpg", "toytar/c/c_3.jpg", f"toytar/{LOCK_NAME}", "_archives/set.tar",
                     f"_archives/{LOCK_NAME}"}
    assert sorted(report.extracted) == ["a/a_1.jpg", "c/c_3.jpg"]
    # trust on first use: the archive and the member without a hash are recorded, the known one is not
    assert ShaLock(cache / "_archives" / LOCK_NAME).read() == {"set.tar": sha(archive)}
    assert ShaLock(cache / "toytar" / LOCK_NAME).read() == {"c/c_3.jpg": sha(members["set/n02/c_3.jpg"])}
    # the loader finds them offline and checks them against the manifest and the lock
    items = ManifestDataset(str(manifest.path), data_dir=str(cache)).items()
    assert [i.item_id for i in items] == ["a/a_1/0", "c/c_3/0"]
    (cache / "toytar/c/c_3.jpg").write_bytes(b"tampered")
    with pytest.raises(Exception, match="c/c_3"):
        ManifestDataset(str(manifest.path), data_dir=str(cache)).items()


def test_extract_members_streams_and_names_missing(tmp_path):
    archive = tmp_path / "x.tar"
    archive.write_bytes(make_tar({"top/one.txt": b"1", "top/two.txt": b"2"}))
    wanted = {"top/one.txt": tmp_path / "out/one.txt", "top/nope.txt": tmp_path / "out/nope.txt"}
    with pytest.raises(DownloadError, match=r"missing from archive.*top/nope\.txt"):
        extract_members(archive, wanted, url="http://example.invalid/x.tar")
    assert (tmp_path / "out/one.txt").read_bytes() == b"1"
    assert not (tmp_path / "out/two.txt").exists() and not (tmp_path / "out/nope.txt").exists()


def test_missing_member_fails_fetch(serve, tmp_path):
    server = serve({"/set.tar": make_tar({"set/a.jpg": b"a"})})
    manifest = load_manifest(write_manifest(tmp_path / "m.yaml", {
        "name": "toytar", "version": "1",
        "archives": {"set": {"url": f"{server.url}/set.tar", "sha256": None}},
        "images": [entry("b", "b.jpg", archive="set", member="set/b.jpg")]}))
    with pytest.warns(UnverifiedDownloadWarning), pytest.raises(DownloadError, match="set/b.jpg"):
        fetch(manifest, tmp_path / "cache", retries=0, backoff=0, timeout=5)


def test_trust_on_first_use_then_changed_source_is_an_error(serve, tmp_path):
    first, second = payload(4_000, 7), payload(4_000, 8)
    server = serve({"/x.png": first})
    manifest = load_manifest(write_manifest(tmp_path / "m.yaml", {
        "name": "tofu", "version": "1", "images": [entry("x", "x.png", url=f"{server.url}/x.png")]}))
    cache = tmp_path / "cache"
    with pytest.warns(UnverifiedDownloadWarning, match="trusting it on first use"):
        fetch(manifest, cache, retries=0, backoff=0, timeout=5)
    assert ShaLock(cache / "tofu" / LOCK_NAME).get("x.png") == sha(first)
    # the file is removed and the source changes: the re-download must not match the recorded hash
    (cache / "tofu/x.png").unlink()
    server.files["/x.png"] = second
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(manifest, cache, retries=0, backoff=0, timeout=5)
    assert not (cache / "tofu/x.png").exists() and not (cache / "tofu/x.png.part").exists()


def test_present_files_are_verified_not_redownloaded(serve, tmp_path):
    data = payload(3_000, 9)
    server = serve({"/y.png": data})
    manifest = load_manifest(write_manifest(tmp_path / "m.yaml", {
        "name": "again", "version": "1", "images": [entry("y", "y.png", url=f"{server.url}/y.png", sha256=sha(data))]}))
    cache = tmp_path / "cache"
    assert fetch(manifest, cache, retries=0, backoff=0, timeout=5).downloaded == ["y.png"]
    report = fetch(manifest, cache, retries=0, backoff=0, timeout=5)
    assert report.present == ["y.png"] and report.downloaded == []
    assert len(server.log) == 1


def test_offline_error_names_every_url_and_drop_location(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    urls = [f"http://127.0.0.1:{port}/cats/cat_{k}.png" for k in (1, 2)]
    manifest = load_manifest(write_manifest(tmp_path / "m.yaml", {
        "name": "off", "version": "1",
        "images": [entry(f"cat_{k}", f"cats/cat_{k}.png", url=url, sha256=str(k) * 64)
                   for k, url in zip((1, 2), urls)]}))
    cache = tmp_path / "cache"
    with pytest.raises(NetworkError) as err:
        fetch(manifest, cache, retries=1, backoff=0, timeout=5)
    message = str(err.value)
    for k, url in zip((1, 2), urls):
        assert url in message
        assert str(cache / "off" / "cats" / f"cat_{k}.png") in message and str(k) * 64 in message
    assert "bench data fetch off" in message
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_http_404_is_not_retried(serve, tmp_path):
    server = serve({})
    with pytest.raises(DownloadError, match="HTTP 404"):
        http_download(f"{server.url}/nope.png", tmp_path / "nope.png", retries=3, backoff=0, timeout=5)
    assert len(server.log) == 1


def test_cli_fetch(serve, tmp_path, capsys):
    from bench.cli import run_command

    data = payload(2_000, 10)
    server = serve({"/z.png": data}, drop_once={"/z.png"}, cut_at=500)
    manifest = write_manifest(tmp_path / "m.yaml", {
        "name": "clitest", "version": "1", "images": [entry("z", "z.png", url=f"{server.url}/z.png", sha256=sha(data))]})
    cache = tmp_path / "cache"
    assert run_command(["data", "fetch", str(manifest), "--cache-dir", str(cache), "--quiet"]) == 0
    assert (cache / "clitest/z.png").read_bytes() == data
    assert "1 downloaded" in capsys.readouterr().out
    assert run_command(["data", "fetch", "no_such_dataset", "--cache-dir", str(cache), "--quiet"]) == 1
    assert "unknown dataset 'no_such_dataset'" in capsys.readouterr().err
    assert os.listdir(cache) == ["clitest"]
