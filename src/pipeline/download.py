"""Fetching the official Quick, Draw! class files: parallel, resumable, verified.

The public ``quickdraw_dataset`` bucket holds one file per class and format::

    sketchrnn/<name>.npz            sketch-rnn stroke-3 (70,000 / 2,500 / 2,500 per class)
    sketchrnn/<name>.full.npz       the same sketches, every drawing of the class
    full/simplified/<name>.ndjson   simplified drawings
    full/raw/<name>.ndjson          raw drawings with timings

``<name>`` is one of the 345 official category names (:func:`official_categories`), URL-encoded.
A file is written to ``<name>.<ext>.part`` and renamed when complete and verified (length, and
the MD5 or CRC32C that the server reports in ``x-goog-hash``), so a file under its final name is
always whole: such files are never fetched again. An interrupted file resumes with an HTTP Range
request. Server errors (5xx), timeouts and dropped connections are retried with exponential
backoff; a missing file (404) or a hash mismatch stops the download with one line naming the class
and the URL. Nothing is trusted for long: a file stops at :data:`MAX_FILE_BYTES` of its format and at
``deadline_seconds`` however the server paces it, and it gets its final name only if it starts as its
kind must (a zip archive for ``.npz``, a JSON object per line for ``.ndjson``): a server answering 200
with an HTML page is not kept as ``cat.npz``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import hashlib
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

OFFICIAL_BASE_URL = "https://storage.googleapis.com/quickdraw_dataset"

# format -> (path in the bucket, local file name); ``{}`` is the class name
FORMATS: dict[str, tuple[str, str]] = {
    "sketchrnn": ("sketchrnn/{}.npz", "{}.npz"),
    "sketchrnn-full": ("sketchrnn/{}.full.npz", "{}.full.npz"),
    "simplified": ("full/simplified/{}.ndjson", "{}.ndjson"),
    "raw": ("full/raw/{}.ndjson", "{}.ndjson"),
}
# the format a source downloads when the settings name none
SOURCE_FORMATS = {"sketchrnn": "sketchrnn", "ndjson": "simplified"}

_CHUNK = 1 << 16  # what a dropped connection can cost: the chunk being received is lost

# the most one class file of a format may hold: several times the largest official file of it
MAX_FILE_BYTES = {"sketchrnn": 256 << 20, "sketchrnn-full": 4 << 30, "simplified": 4 << 30, "raw": 16 << 30}
DEADLINE_SECONDS = 6 * 3600.0  # one file's download, all attempts together


class DownloadError(RuntimeError):
    """A class file could not be fetched or failed verification; the message names the class and URL."""


class _RetryableError(Exception):
    """A failure that may pass: a server error, a timeout, a dropped connection."""


@dataclasses.dataclass(frozen=True)
class DownloadedFile:
    """One class file: where it is, where it came from, and what this download did for it."""

    name: str
    path: str
    url: str
    size: int
    fetched_bytes: int  # 0 when the file was already complete
    attempts: int  # requests made for it (0 when skipped)

    @property
    def skipped(self) -> bool:
        """Return whether the file was already complete and nothing was fetched."""
        return self.attempts == 0


def official_categories() -> list[str]:
    """Return the 345 official Quick, Draw! category names, in the order of the official list.

    The list ships with the package (``pipeline/data/categories.txt``, from the Quick, Draw! dataset
    by Google, CC BY 4.0).
    """
    text = resources.files("pipeline").joinpath("data/categories.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_url(base_url: str, file_format: str, name: str) -> str:
    """Return the URL of one class file: ``<base_url>/<format path>`` with the name URL-encoded."""
    remote, _ = FORMATS[file_format]
    return f"{base_url.rstrip('/')}/{remote.format(urllib.parse.quote(name))}"


def local_name(file_format: str, name: str) -> str:
    """Return the file name a class file of ``file_format`` is saved under (``cat.npz``, ``cat.ndjson``)."""
    return FORMATS[file_format][1].format(name)


def resolve_classes(classes: Sequence[str] | None, num_classes: int | None = None) -> list[str]:
    """Return the official classes to fetch: the named ones (each must be official), else the first
    ``num_classes`` in file-name order, else all 345.

    Raises:
        ValueError: a named class is not an official category (the message names it).
    """
    official = official_categories()
    if classes:
        unknown = [c for c in classes if c not in official]
        if unknown:
            raise ValueError(
                f"{', '.join(repr(c) for c in unknown)} is not a Quick, Draw! category "
                f"(the 345 names are in pipeline/data/categories.txt)"
            )
        return list(dict.fromkeys(classes))
    ordered = sorted(official)  # the order in which a folder's class files are read
    return ordered[:num_classes] if num_classes else ordered


def download_classes(
    names: Sequence[str],
    file_format: str,
    dest: Path,
    base_url: str = OFFICIAL_BASE_URL,
    workers: int = 4,
    retries: int = 4,
    backoff_seconds: float = 1.0,
    timeout_seconds: float = 60.0,
    show_progress: bool = False,
    max_bytes: int | None = None,
    deadline_seconds: float = DEADLINE_SECONDS,
) -> list[DownloadedFile]:
    """Fetch the class files ``names`` of ``file_format`` into ``dest``, in parallel; return them in order.

    Files already complete in ``dest`` are not fetched again; a ``.part`` file left by an
    interrupted download is resumed.

    ``timeout_seconds`` bounds each read; ``max_bytes`` (default :data:`MAX_FILE_BYTES` of the format)
    and ``deadline_seconds`` bound each file whatever the server sends.

    Raises:
        DownloadError: a file is missing on the server, fails verification, is not what its name says,
            grows past ``max_bytes``, is not done by ``deadline_seconds``, or still fails after ``retries``
            retries. Downloads under way stop, keeping their ``.part`` files to resume.
    """
    if file_format not in FORMATS:
        raise ValueError(f"unknown format {file_format!r}; choose from {', '.join(FORMATS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    bar = _ByteProgress(len(names), show_progress)

    def fetch(name: str) -> DownloadedFile:
        return _fetch_class(
            name,
            class_url(base_url, file_format, name),
            dest / local_name(file_format, name),
            retries=retries,
            backoff_seconds=backoff_seconds,
            timeout_seconds=timeout_seconds,
            stop=stop,
            on_bytes=bar.add_bytes,
            max_bytes=max_bytes or MAX_FILE_BYTES[file_format],
            deadline=time.monotonic() + deadline_seconds,
        )

    results: dict[str, DownloadedFile] = {}
    with bar, concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(fetch, name): name for name in names}
        try:
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                bar.file_done()
        except BaseException:
            stop.set()  # downloads under way end at their next chunk, keeping their .part files
            for pending in futures:
                pending.cancel()
            raise
    return [results[name] for name in names]


def _fetch_class(
    name: str,
    url: str,
    path: Path,
    retries: int,
    backoff_seconds: float,
    timeout_seconds: float,
    stop: threading.Event,
    on_bytes: Callable[[int], None],
    max_bytes: int,
    deadline: float,
) -> DownloadedFile:
    """Fetch one file to ``path`` through ``path.part``, resuming and retrying; verify and rename it."""
    import requests

    if path.exists():
        try:
            _check_kind(name, url, path, path.name)
            return DownloadedFile(name, str(path), url, path.stat().st_size, 0, 0)
        except DownloadError:  # an earlier release kept what the server sent, an error page say: fetch again
            pass
    part = path.with_name(path.name + ".part")
    fetched = 0

    def received(count: int) -> None:
        nonlocal fetched
        fetched += count
        on_bytes(count)

    for attempt in range(retries + 1):
        if stop.is_set():
            raise DownloadError(f"{name}: download stopped ({url})")
        try:
            _fetch_once(name, url, part, timeout_seconds, stop, received, max_bytes, deadline)
            break
        except (
            _RetryableError,
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            if attempt == retries:
                raise DownloadError(
                    f"{name}: {url} still failing after {retries + 1} attempts ({_reason(exc)})"
                ) from exc
            if time.monotonic() + backoff_seconds * 2**attempt > deadline:
                raise DownloadError(f"{name}: {url} not done within its deadline ({_reason(exc)})") from exc
            time.sleep(backoff_seconds * 2**attempt)
    _check_kind(name, url, part, path.name)
    part.replace(path)
    return DownloadedFile(name, str(path), url, path.stat().st_size, fetched, attempt + 1)


def _fetch_once(
    name: str,
    url: str,
    part: Path,
    timeout_seconds: float,
    stop: threading.Event,
    on_bytes: Callable[[int], None],
    max_bytes: int,
    deadline: float,
) -> None:
    """Make one request for the rest of ``part``, appending to it; when it is whole, verify it."""
    import requests

    have = part.stat().st_size if part.exists() else 0
    # identity: the bytes on disk must be the object's bytes, which the length and hashes describe
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout_seconds) as response:
        status = response.status_code
        if status == 416 and have:  # the .part is not a prefix of this object (it changed): start over
            part.unlink()
            raise _RetryableError("HTTP 416, restarting the file")
        if status == 404:
            raise DownloadError(f"{name}: not found (HTTP 404) at {url}")
        if status >= 500 or status in (408, 429):
            raise _RetryableError(f"HTTP {status}")
        if status not in (200, 206):
            raise DownloadError(f"{name}: HTTP {status} at {url}")
        if status == 200 and have:  # the server ignored the range: the whole file comes again
            have = 0
        total = _total_length(response, have)
        if total is not None and total > max_bytes:
            raise DownloadError(f"{name}: the server announces {total:,} bytes, over the {max_bytes:,} allowed ({url})")
        hashes = _reported_hashes(response.headers.get("x-goog-hash", ""))
        size = have
        with open(part, "ab" if have else "wb") as sink:
            for chunk in _arriving(response):
                if stop.is_set():
                    raise DownloadError(f"{name}: download stopped ({url})")
                size += len(chunk)
                if size > max_bytes:
                    sink.close()
                    part.unlink()
                    raise DownloadError(f"{name}: over {max_bytes:,} bytes and still coming; not kept ({url})")
                if time.monotonic() > deadline:  # a server that trickles bytes: each read is in time
                    raise DownloadError(f"{name}: not done within its deadline; the part is kept to resume ({url})")
                sink.write(chunk)
                on_bytes(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _RetryableError(f"connection closed at byte {size} of {total}")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"{name}: got {size} bytes but the server announced {total} ({url})")
    _verify(name, url, part, hashes)


def _arriving(response):
    """Yield a streamed response's bytes as they arrive: each read returns after one receive, so a server
    that sends a few bytes at a time (each in time for the read timeout) cannot hold a read for long."""
    from urllib3.exceptions import ProtocolError, ReadTimeoutError, SSLError

    while True:
        try:
            chunk = response.raw.read1(_CHUNK, decode_content=True)
        except (ProtocolError, ReadTimeoutError, SSLError) as exc:  # what requests' iter_content would wrap
            raise _RetryableError(f"connection broken ({type(exc).__name__})") from exc
        if not chunk:
            return
        yield chunk


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first member, or an empty archive
_GZIP_MAGIC = b"\x1f\x8b"


def _check_kind(name: str, url: str, part: Path, final_name: str) -> None:
    """Delete ``part`` and raise unless it starts as ``final_name``'s kind must: a zip archive for
    ``.npz``, a JSON object on its first line (or gzip) for ``.ndjson``."""
    with open(part, "rb") as head:
        start = head.read(4096)
    if final_name.endswith(".npz"):
        fits, kind = start.startswith(_ZIP_MAGIC), "a zip archive (.npz)"
    else:
        line = start.split(b"\n", 1)[0].strip()
        fits, kind = start.startswith(_GZIP_MAGIC) or line.startswith(b"{"), "JSON lines (.ndjson)"
        if fits and not start.startswith(_GZIP_MAGIC) and b"\n" in start:
            import json

            try:
                fits = isinstance(json.loads(line), dict)
            except ValueError:
                fits = False
    if not fits:
        part.unlink()
        raise DownloadError(f"{name}: {url} answered with something that is not {kind}: {start[:40]!r}; not kept")


def _total_length(response, offset: int) -> int | None:
    """Return the whole object's length from ``Content-Range`` (206) or ``Content-Length`` (200)."""
    content_range = response.headers.get("Content-Range", "")
    if response.status_code == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _reported_hashes(header: str) -> dict[str, str]:
    """Return ``{"md5": b64, "crc32c": b64}`` from an ``x-goog-hash`` header (either may be missing)."""
    hashes = {}
    for item in header.split(","):
        kind, _, value = item.strip().partition("=")
        if kind in ("md5", "crc32c") and value:
            hashes[kind] = value
    return hashes


def _verify(name: str, url: str, part: Path, hashes: dict[str, str]) -> None:
    """Check ``part`` against the reported MD5 (else CRC32C); on a mismatch delete it and raise."""
    if "md5" in hashes:
        kind, actual = "md5", _file_md5(part)
    elif "crc32c" in hashes:
        kind, actual = "crc32c", _file_crc32c(part)
    else:
        return
    if actual != hashes[kind]:
        part.unlink()
        raise DownloadError(f"{name}: {kind} mismatch (server {hashes[kind]}, received {actual}) for {url}")


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(_CHUNK), b""):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


def _file_crc32c(path: Path) -> str:
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(_CHUNK), b""):
            checksum.update(block)
    return base64.b64encode(checksum.digest()).decode()


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text[:120]}" if text else exc.__class__.__name__


class _ByteProgress:
    """A bar of bytes received over all files (tqdm), safe to update from the download threads."""

    def __init__(self, files: int, show: bool):
        self._bar = None
        self._lock = threading.Lock()
        self._files, self._done = files, 0
        if show:
            from tqdm import tqdm

            self._bar = tqdm(desc=f"download 0/{files} files", unit="B", unit_scale=True, unit_divisor=1024)

    def add_bytes(self, count: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(count)

    def file_done(self) -> None:
        if self._bar is not None:
            with self._lock:
                self._done += 1
                self._bar.set_description(f"download {self._done}/{self._files} files")

    def __enter__(self) -> _ByteProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
