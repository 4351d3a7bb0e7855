"""Fetch the files a dataset manifest lists into the download cache (``bench data fetch <dataset>``).

- Streaming and resumable: a download goes to ``<file>.part``; a cut connection or a re-run continues
  from the bytes already there with an HTTP ``Range`` request (a server that ignores ``Range`` makes
  it start over).
- Verified: every file is checked against the manifest's sha256. On a mismatch the file is deleted
  (nothing corrupt stays in the cache) and an error names the URL, the expected and the actual hash.
- Trust on first use: entries whose sha256 is unknown (``null``) are hashed on first download and the
  hash is recorded in a sidecar lock file (``<cache>/<dataset>/sha256.lock.json``; archives in
  ``<cache>/_archives/sha256.lock.json``), with a warning. Later fetches and loads check against it.
- Archives: a tarball is downloaded once to ``<cache>/_archives/``; the needed members are then
  streamed out of it (one pass, no full extraction, stops as soon as all are found). A listed member
  that is not in the archive is an error naming it.
- Offline: a network failure raises an error naming the URL and the exact path where the file can be
  dropped by hand (it is then verified and used like a download).

Loading a dataset never calls this module's network code.
"""

from __future__ import annotations

import os
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Callable

from bench.data.locks import LOCK_NAME, ShaLock, lock_file
from bench.data.manifest import ImageEntry, Manifest, cache_path
from bench.fingerprint import file_sha256
from bench.io import TMP_MARK

USER_AGENT = "editbench-data-fetch/1"
CHUNK = 1 << 20
ARCHIVES_DIR = "_archives"


class DownloadError(RuntimeError):
    """A file that could not be fetched or verified; the message says what to do about it."""


class NetworkError(DownloadError):
    """The server could not be reached (offline, DNS, refused, repeated cuts); the message says where
    to put the file by hand."""


class UnverifiedDownloadWarning(UserWarning):
    """A file whose sha256 is not in the manifest was trusted on first use (hash recorded in the lock)."""


@dataclass
class FetchReport:
    dataset: str
    present: list[str] = field(default_factory=list)  # already in the cache and verified
    downloaded: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    trusted_on_first_use: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.dataset}: {len(self.present)} present, {len(self.downloaded)} downloaded, "
                f"{len(self.extracted)} extracted from archives, "
                f"{len(self.trusted_on_first_use)} hashes recorded on first use")


def _offline_hint(url: str, dest: Path, expected: str | None, dataset: str) -> str:
    sha = f" (sha256 {expected})" if expected else ""
    return (f"If this machine is offline, download {url} elsewhere and put it at {dest}{sha}, "
            f"then re-run `bench data fetch {dataset}`.")


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def http_download(url: str, dest: str | os.PathLike, expected_sha256: str | None = None, *, dataset: str = "?",
                  retries: int = 3, timeout: float = 30.0, backoff: float = 1.0,
                  progress: Callable[[str, int, int | None], None] | None = None) -> str:
    """Download ``url`` to ``dest`` (streaming, resuming ``dest.part``), verify it, return its sha256.

    ``retries`` bounds the number of extra attempts after a failed or cut one; each attempt resumes
    from the partial file. On a sha256 mismatch both the partial and the final file are removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: BaseException | None = None
    complete = False
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * attempt)
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:  # nothing left to send: the partial file is complete
                complete = True
                break
            if 400 <= err.code < 500:
                raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}. "
                                    + _offline_hint(url, dest, expected_sha256, dataset)) from err
            last_error = err
            continue
        except (urllib.error.URLError, OSError, HTTPException) as err:
            last_error = err
            continue
        with response:
            status = getattr(response, "status", 200)
            if offset and status == 206:
                content_range = response.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {offset}-"):
                    last_error = DownloadError(f"{url}: server answered Range bytes={offset}- with "
                                               f"Content-Range {content_range!r}")
                    part.unlink(missing_ok=True)
                    continue
                mode = "ab"
            else:  # a full response (first attempt, or a server that ignores Range)
                offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            received = offset
            try:
                with open(part, mode) as handle:
                    while True:
                        block = response.read(CHUNK)
                        if not block:
                            break
                        handle.write(block)
                        received += len(block)
                        if progress:
                            progress(url, received, total)
            except (OSError, HTTPException, socket.timeout) as err:
                last_error = err
                continue
            if total is not None and received < total:
                last_error = DownloadError(f"connection closed after {received} of {total} bytes")
                continue
            complete = True
            break
    if not complete:
        kept = f" The partial file {part} is kept; re-running resumes it." if part.exists() else ""
        raise NetworkError(f"cannot download {url} after {retries + 1} attempt(s): {last_error}.{kept} "
                            + _offline_hint(url, dest, expected_sha256, dataset))
    actual = file_sha256(part)
    if expected_sha256 and actual != expected_sha256:
        part.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)
        raise DownloadError(f"sha256 mismatch for {url}: got {actual}, expected {expected_sha256}. "
                            f"The file was deleted; the source may have changed or the manifest is wrong.")
    _fsync_replace(part, dest)
    return actual


def _check_or_trust(path: Path, expected: str | None, lock: ShaLock, key: str, what: str,
                    report: FetchReport, *, delete_on_mismatch: bool) -> None:
    """Verify ``path`` against ``expected`` (manifest) or the lock; record the hash if neither knows it."""
    actual = file_sha256(path)
    known = expected or lock.get(key)
    if known is None:
        lock.set(key, actual)
        report.trusted_on_first_use.append(key)
        warnings.warn(f"{what}: no sha256 in the manifest; trusting it on first use and recording "
                      f"{actual} in {lock.path}", UnverifiedDownloadWarning, stacklevel=3)
        return
    if actual != known:
        source = "the manifest" if expected else f"the lock file {lock.path} (recorded on first use)"
        if delete_on_mismatch:
            path.unlink(missing_ok=True)
        raise DownloadError(f"{what}: sha256 {actual} does not match {known} from {source}. "
                            + ("The file was deleted." if delete_on_mismatch else
                               f"Delete {path} to fetch it again."))


def extract_members(archive: str | os.PathLike, wanted: dict[str, Path], *, url: str = "") -> list[str]:
    """Stream through a tar archive once and write only the ``wanted`` members (member → destination),
    each atomically. Stops reading as soon as every wanted member is written. Raises DownloadError
    naming every wanted member that is not in the archive (the others are still written)."""
    remaining = dict(wanted)
    written = []
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                target = remaining.pop(member.name, None) or remaining.pop(member.name.removeprefix("./"), None)
                if target is None:
                    continue
                if not member.isfile():
                    raise DownloadError(f"{archive}: member {member.name!r} is not a regular file")
                source = tar.extractfile(member)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + TMP_MARK + "extract")
                try:
                    with open(tmp, "wb") as handle:
                        while block := source.read(CHUNK):
                            handle.write(block)
                    _fsync_replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
                written.append(member.name)
                if not remaining:
                    break
    except tarfile.TarError as err:
        raise DownloadError(f"{archive} is not a readable tar archive ({err}); delete it to download it again") from err
    if remaining:
        names = sorted(remaining)
        raise DownloadError(f"{len(names)} member(s) missing from archive {archive} ({url or 'local file'}): "
                            f"{names[:20]}{' ...' if len(names) > 20 else ''}")
    return written


def fetch(manifest: Manifest, data_dir: str | os.PathLike, *, retries: int = 3, timeout: float = 30.0,
          backoff: float = 1.0, keep_archives: bool = True,
          progress: Callable[[str, int, int | None], None] | None = None,
          log: Callable[[str], None] | None = None) -> FetchReport:
    """Make every file of ``manifest`` present and verified under ``<data_dir>/<manifest.name>/``."""
    data_dir = Path(data_dir)
    log = log or (lambda message: None)
    report = FetchReport(manifest.name)
    lock = ShaLock(lock_file(data_dir, manifest.name))
    by_archive: dict[str, list[ImageEntry]] = {}
    unreachable: list[tuple[str, Path, str | None]] = []  # after a network failure: (url, drop here, sha256)

    def download(url: str, dest: Path, expected: str | None) -> bool:
        """Download unless the network already failed in this fetch; False when skipped or failed."""
        if unreachable:
            unreachable.append((url, dest, expected))
            return False
        log(f"downloading {url}")
        try:
            http_download(url, dest, expected, dataset=manifest.name, retries=retries, timeout=timeout,
                          backoff=backoff, progress=progress)
        except NetworkError as err:
            unreachable.append((url, dest, expected))
            log(str(err))
            return False
        return True

    for entry in manifest.images:
        dest = cache_path(manifest, data_dir, entry)
        what = f"{manifest.name} image {entry.id!r} ({dest})"
        if dest.is_file():
            _check_or_trust(dest, entry.sha256, lock, entry.file, what, report, delete_on_mismatch=False)
            report.present.append(entry.file)
        elif entry.url:
            if download(entry.url, dest, entry.sha256 or lock.get(entry.file)):
                _check_or_trust(dest, entry.sha256, lock, entry.file, what, report, delete_on_mismatch=True)
                report.downloaded.append(entry.file)
        elif entry.archive:
            by_archive.setdefault(entry.archive, []).append(entry)
        else:
            raise DownloadError(f"{what}: no 'url' or 'archive' in {manifest.path}; put the file at {dest} by hand")
    for key, entries in by_archive.items():
        archive = manifest.archives[key]
        archive_path = data_dir / ARCHIVES_DIR / archive.filename
        archive_lock = ShaLock(data_dir / ARCHIVES_DIR / LOCK_NAME)
        what = f"archive {key!r} ({archive_path})"
        if not archive_path.is_file() and not download(
                archive.url, archive_path, archive.sha256 or archive_lock.get(archive.filename)):
            continue
        _check_or_trust(archive_path, archive.sha256, archive_lock, archive.filename, what, report,
                        delete_on_mismatch=False)
        wanted = {entry.member: cache_path(manifest, data_dir, entry) for entry in entries}
        log(f"extracting {len(wanted)} member(s) from {archive_path}")
        extract_members(archive_path, wanted, url=archive.url)
        for entry in entries:
            dest = cache_path(manifest, data_dir, entry)
            _check_or_trust(dest, entry.sha256, lock, entry.file,
                            f"{manifest.name} image {entry.id!r} ({entry.member} in {archive.url})", report,
                            delete_on_mismatch=True)
            report.extracted.append(entry.file)
        if not keep_archives:
            archive_path.unlink(missing_ok=True)
    if unreachable:
        lines = "\n".join(f"  {url}\n    -> {dest}" + (f"  (sha256 {sha})" if sha else "")
                          for url, dest, sha in unreachable)
        raise NetworkError(
            f"{manifest.name}: {len(unreachable)} file(s) could not be downloaded (the network failed at "
            f"{unreachable[0][0]}). If this machine is offline, download each URL elsewhere and put the file at the "
            f"path shown, then re-run `bench data fetch {manifest.name}` (files are verified, archives extracted):\n"
            + lines)
    return report


def print_progress(stream=sys.stderr, every: int = 64 << 20) -> Callable[[str, int, int | None], None]:
    """A progress callback that prints a line every ``every`` bytes (and at the end) per URL."""
    last: dict[str, int] = {}

    def report(url: str, received: int, total: int | None) -> None:
        if received - last.get(url, 0) >= every or (total is not None and received == total):
            last[url] = received
            size = f"/{total / 1e6:.1f}" if total else ""
            print(f"  {url}: {received / 1e6:.1f}{size} MB", file=stream, flush=True)

    return report
