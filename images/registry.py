"""Instance images from registries: pull what is missing, and remove what a finished run left behind.

SWE-bench-style datasets run each instance in its own prebuilt image (hundreds of images, up to a few
GB each), so a batch pulls them as it goes and a user prunes them afterwards. Everything here talks to
the Docker daemon through docker-py and imports nothing of ours, so both the command line
(`agent images pull|prune`) and a batch worker use it.

Pulling (`ensure_image`):
- one pull per image at a time in a process (workers needing the same image wait for the first), and
  at most `PullOptions.concurrency` pulls at once (a semaphore), so a batch of 500 instances does
  not start 500 downloads;
- bounded retries with exponential backoff (tenacity) for failures that can pass (registry
  unreachable, a stalled transfer, a registry error), none for those that cannot (no such image, disk
  full);
- a deadline for the whole pull, and a read timeout on the daemon's stream so a registry that stops
  sending cannot hang a worker;
- every failure is one line that says which of these it was and what to do (`PullError`).

Pruning (`prune_images`): official-style instance images (`*/sweb.eval.*`, `*/swesmith.*`), the
project's environment images (`cwm-runner/env-*`) and repository images (`cwm-runner/repo-*`,
images.repo_images, including one a killed build left untagged), except those a container (running
or stopped) still uses; the base image is never touched. With a size budget, least recently used
first, until the rest fit.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import docker
import requests
import structlog
import urllib3
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.utils import kwargs_from_env
from pydantic import BaseModel, Field
from tenacity import Retrying, retry, retry_if_exception, stop_after_attempt, wait_exponential

from images.repo_images import LABEL_KEY, REPOSITORY_PREFIX, last_used

log = structlog.get_logger()

PullErrorKind = Literal["not_found", "unreachable", "disk_full", "timeout", "daemon", "failed"]
RETRYABLE: frozenset[str] = frozenset({"unreachable", "timeout", "failed"})

# What the daemon says, by kind (matched case-insensitively, in this order: a "not found" inside a
# network error must not read as a missing image, so the network patterns are specific).
_PATTERNS: tuple[tuple[PullErrorKind, re.Pattern[str]], ...] = (
    ("disk_full", re.compile(r"no space left on device|disk quota exceeded", re.I)),
    ("unreachable", re.compile(r"connection refused|no route to host|no such host|network is unreachable|"
                               r"dial tcp|i/o timeout|tls handshake timeout|server misbehaving|"
                               r"connection reset|eof$|client\.timeout", re.I)),
    ("not_found", re.compile(r"manifest unknown|not found|name unknown|repository does not exist|"
                             r"pull access denied|unauthorized|denied", re.I)),
)


class PullError(RuntimeError):
    """An image could not be pulled; `str()` is one line saying which failure it was and what to do."""

    def __init__(self, image: str, kind: PullErrorKind, detail: str, attempts: int = 1) -> None:
        self.image, self.kind, self.detail, self.attempts = image, kind, detail.strip(), attempts
        super().__init__(self.line())

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    def line(self) -> str:
        tries = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        detail = self.detail.splitlines()[0][:200] if self.detail else ""
        return {
            "not_found": f"no such image {self.image} (or it is private): {detail}; check the instance's image "
                         "name, --registry and --image-prefix, or `docker login`",
            "unreachable": f"registry unreachable for {self.image}{tries}: {detail}; check the network, or name a "
                           "reachable mirror with --registry",
            "disk_full": f"disk full while pulling {self.image}: {detail}; free space with `agent images prune` "
                         "(or `docker system prune`)",
            "timeout": f"pulling {self.image} timed out{tries}: {detail}; raise --pull-timeout or check the registry",
            "daemon": f"cannot reach the Docker daemon ({detail}); start it (e.g. `dockerd`) or set DOCKER_HOST",
            "failed": f"pulling {self.image} failed{tries}: {detail}",
        }[self.kind]


def classify(message: str) -> PullErrorKind:
    """The kind of a daemon's pull error message (`PullError.kind`)."""
    for kind, pattern in _PATTERNS:
        if pattern.search(message.strip()):
            return kind
    return "failed"


class PullOptions(BaseModel):
    """How images are pulled; the defaults suit a batch on one host."""

    platform: str | None = Field(default=None, description="e.g. linux/amd64 (default: the daemon's own)")
    timeout_s: float = Field(default=1800.0, gt=0, description="the whole pull of one image, each attempt")
    stall_s: float = Field(default=300.0, gt=0, description="longest wait for the daemon's next progress event")
    attempts: int = Field(default=3, ge=1, description="attempts for failures that can pass")
    backoff_s: float = Field(default=2.0, ge=0, description="first wait between attempts (doubles, at most 60 s)")
    concurrency: int = Field(default=2, ge=1, description="pulls at once in this process")


# -- names ---------------------------------------------------------------------------------------------


def _has_registry(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost"


def split_reference(name: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference; the tag defaults to `latest`."""
    if "@" in name:
        repository, digest = name.split("@", 1)
        return repository, digest
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = name.rsplit(":", 1)
        return repository, tag
    return name, "latest"


def with_registry(name: str, registry: str | None) -> str:
    """`name` served by `registry` (host[:port][/path]) instead of the one it names (Docker Hub if none),
    for mirrors: `swebench/x:latest` with `mirror:5000` is `mirror:5000/swebench/x:latest`."""
    if not registry:
        return name
    first, _, rest = name.partition("/")
    path = rest if rest and _has_registry(first) else name
    return f"{registry.rstrip('/')}/{path}"


# -- pulling -------------------------------------------------------------------------------------------


class PullProgress(BaseModel):
    """Bytes of one pull so far, summed over its layers (totals grow as layers report theirs)."""

    image: str
    status: str = "waiting"
    layers: dict[str, tuple[int, int]] = Field(default_factory=dict, description="layer -> (done, total)")

    @property
    def done(self) -> int:
        return sum(d for d, _ in self.layers.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.layers.values())

    def update(self, event: dict[str, Any]) -> None:
        status, layer = str(event.get("status", "")), str(event.get("id", ""))
        detail = event.get("progressDetail") or {}
        self.status = status.split(":")[0] or self.status
        if status == "Downloading" and detail.get("total"):
            self.layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        elif status in ("Download complete", "Verifying Checksum", "Pull complete") and layer in self.layers:
            self.layers[layer] = (self.layers[layer][1], self.layers[layer][1])


ProgressCallback = Callable[[PullProgress], None]

# Callbacks told of every pull in this process (pulls_watched): a batch's episodes pull their images in
# worker threads that know nothing of the live display.
_watchers: list[ProgressCallback] = []
_watchers_lock = threading.Lock()


@contextmanager
def pulls_watched(callback: ProgressCallback) -> Iterator[None]:
    """While the block runs, `callback` hears of every pull of this process: each progress event, then
    once more with status `done` or `failed`."""
    with _watchers_lock:
        _watchers.append(callback)
    try:
        yield
    finally:
        with _watchers_lock:
            _watchers.remove(callback)


def _report(progress: PullProgress, on_progress: ProgressCallback | None) -> None:
    with _watchers_lock:
        listeners = ([on_progress] if on_progress is not None else []) + _watchers
    for listener in listeners:
        listener(progress)


class _Client(docker.APIClient):
    """docker-py sends a pull with no read timeout at all (`ImageApiMixin.pull` passes `timeout=None`), so
    a registry that stops sending would hang the worker; this client bounds each wait for the daemon's
    next byte by `stall_s` (docker-py's own `_post` is the one place to say so)."""

    stall_s: float = 300.0

    def _post(self, url: str, *args: Any, **kwargs: Any) -> Any:
        if url.endswith("/images/create") and kwargs.get("timeout", 0) is None:
            kwargs["timeout"] = (60, self.stall_s)
        return super()._post(url, *args, **kwargs)


def _api(stall_s: float = 300.0) -> _Client:
    try:
        client = _Client(version="auto", timeout=600, **kwargs_from_env())
    except (DockerException, requests.exceptions.ConnectionError) as error:
        raise PullError("", "daemon", str(error)) from None
    client.stall_s = stall_s
    return client


def image_present(name: str) -> bool:
    api = _api()
    try:
        api.inspect_image(name)
        return True
    except (ImageNotFound, NotFound):
        return False
    finally:
        api.close()


def _events(api: docker.APIClient, name: str, options: PullOptions) -> Iterator[dict[str, Any]]:
    """The daemon's pull events, its refusals turned into PullErrors."""
    repository, tag = split_reference(name)
    try:
        yield from api.pull(repository, tag=tag, stream=True, decode=True, platform=options.platform)
    except NotFound as error:
        raise PullError(name, "not_found", str(error.explanation or error)) from None
    except APIError as error:
        message = str(error.explanation or error)
        raise PullError(name, classify(message), message) from None
    except (requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError):
        raise PullError(name, "timeout", f"no progress for {options.stall_s:g} s") from None
    except (requests.exceptions.ConnectionError, urllib3.exceptions.HTTPError) as error:
        raise PullError(name, "failed", f"the daemon's stream broke: {error}") from None


def pull_once(name: str, options: PullOptions, on_progress: ProgressCallback | None = None) -> None:
    """One attempt: stream the daemon's pull, reporting progress; raises PullError."""
    deadline = time.monotonic() + options.timeout_s
    progress = PullProgress(image=name)
    api = _api(min(options.stall_s, options.timeout_s))  # never wait past the deadline in one read
    try:
        for event in _events(api, name, options):
            if "error" in event:
                message = str((event.get("errorDetail") or {}).get("message") or event["error"])
                raise PullError(name, classify(message), message)
            progress.update(event)
            _report(progress, on_progress)
            if time.monotonic() > deadline:
                raise PullError(name, "timeout", f"still pulling after {options.timeout_s:g} s")
        progress.status = "done"
    except BaseException:  # a PullError, or the runner interrupted: the listeners hear it ended
        progress.status = "failed"
        raise
    finally:
        api.close()  # also ends a pull abandoned at its deadline: the daemon sees the stream closed
        _report(progress, on_progress)


class Puller:
    """Bounded concurrent pulls in one process, one pull per image name at a time."""

    def __init__(self, concurrency: int) -> None:
        self._slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self._per_image: dict[str, threading.Lock] = {}

    @contextmanager
    def _exclusive(self, name: str) -> Iterator[None]:
        with self._lock:
            lock = self._per_image.setdefault(name, threading.Lock())
        with lock:
            yield

    def ensure(self, name: str, options: PullOptions, on_progress: ProgressCallback | None = None) -> bool:
        """Pull `name` unless the daemon has it; True if it was pulled. Raises PullError."""
        with self._exclusive(name):
            if image_present(name):
                return False
            with self._slots:
                started = time.monotonic()
                log.info("images.pull", image=name)
                self._pull(name, options, on_progress)
                log.info("images.pulled", image=name, seconds=round(time.monotonic() - started, 1))
            if not image_present(name):
                raise PullError(name, "failed", "the daemon reported success but does not have the image")
            return True

    @staticmethod
    def _pull(name: str, options: PullOptions, on_progress: ProgressCallback | None) -> None:
        retrying = Retrying(stop=stop_after_attempt(options.attempts), reraise=True,
                            wait=wait_exponential(multiplier=options.backoff_s, max=60),
                            retry=retry_if_exception(lambda e: isinstance(e, PullError) and e.retryable))
        for attempt in retrying:
            with attempt:
                try:
                    pull_once(name, options, on_progress)
                except PullError as error:
                    error.attempts = attempt.retry_state.attempt_number
                    error.args = (error.line(),)
                    log.info("images.pull_failed", image=name, kind=error.kind, attempt=error.attempts)
                    raise


_pullers: dict[int, Puller] = {}
_pullers_lock = threading.Lock()


def ensure_image(name: str, options: PullOptions | None = None, on_progress: ProgressCallback | None = None) -> bool:
    """Make sure the daemon has `name`, pulling it if missing (see the module docstring); True if pulled.

    Callers with the same `concurrency` share one limit, so every worker of a batch counts against it.
    """
    options = options or PullOptions()
    with _pullers_lock:
        puller = _pullers.setdefault(options.concurrency, Puller(options.concurrency))
    return puller.ensure(name, options, on_progress)


# -- pruning -------------------------------------------------------------------------------------------

INSTANCE_IMAGE = re.compile(r"(^|/)(sweb\.eval|swesmith)\.[^/]*$")
PROJECT_IMAGE = re.compile(r"^cwm-runner/(env|repo)-[^/]*$")


class PrunedImage(BaseModel):
    id: str
    tags: list[str] = Field(description="its prunable tags; none for a repository image a killed build left untagged")
    size: int = Field(description="bytes, layers shared with other images included")
    shared: int = Field(0, description="bytes of layers other images also use")
    last_used: float = Field(0.0, description="when an episode last started from it (else its creation), epoch s")
    in_use: bool = False
    within_budget: bool = Field(False, description="kept: the images that stay fit under --keep-under")
    removed: bool = False
    error: str | None = None

    @property
    def own(self) -> int:
        """Bytes only this image holds: what removing it frees."""
        return max(0, self.size - self.shared)

    @property
    def chosen(self) -> bool:
        return not (self.in_use or self.within_budget)


class PruneReport(BaseModel):
    images: list[PrunedImage] = Field(default_factory=list)
    dry_run: bool = True
    freed: int | None = Field(None, description="bytes the daemon's layer store shrank by (None: dry run)")

    @property
    def reclaimable(self) -> int:
        """Bytes of the chosen images' own layers: what removing them frees at least."""
        return sum(i.own for i in self.images if i.chosen)


def prunable(tag: str) -> bool:
    repository = split_reference(tag)[0]
    return bool(INSTANCE_IMAGE.search(repository) or PROJECT_IMAGE.match(repository))


def _used_image_ids(api: docker.APIClient) -> set[str]:
    return {str(c.get("ImageID", "")) for c in api.containers(all=True)}


_df = retry(retry=retry_if_exception(lambda e: isinstance(e, APIError) and "already running" in str(e)),
            stop=stop_after_attempt(10), wait=wait_exponential(multiplier=0.5, max=5), reraise=True)(
    lambda api: api.df())  # one disk-usage walk at a time per daemon: wait for another client's


def _candidate(image: dict[str, Any], narrowed: re.Pattern[str] | None, used: set[str]) -> PrunedImage | None:
    tags = [t for t in image.get("RepoTags") or [] if t != "<none>:<none>"]
    key = (image.get("Labels") or {}).get(LABEL_KEY)
    if not tags and key:  # a repository image whose build was cut short before its tag
        names, tags = [f"{REPOSITORY_PREFIX}untagged:{key}"], []
    else:
        names = tags = [t for t in tags if prunable(t)]
    if not names or (narrowed is not None and not any(narrowed.search(n) for n in names)):
        return None
    return PrunedImage(id=image["Id"], tags=tags, size=int(image.get("Size") or 0),
                       shared=max(0, int(image.get("SharedSize") or 0)), in_use=image["Id"] in used,
                       last_used=last_used(image["Id"]) or float(image.get("Created") or 0))


def _budget(images: list[PrunedImage], keep_under: int) -> None:
    """Keep the most recently used images whose own bytes fit under `keep_under`; the rest are chosen."""
    total = sum(i.own for i in images)
    for image in sorted(images, key=lambda i: i.last_used):
        if total <= keep_under:
            image.within_budget = not image.in_use
        elif not image.in_use:
            total -= image.own


def prune_images(dry_run: bool = True, match: str | None = None, keep_under: int | None = None) -> PruneReport:
    """Remove instance, environment and repository images no container uses (`dry_run`: only say which).

    `match` (a regex searched in each tag) narrows the choice, e.g. to one mirror's images. `keep_under`
    (bytes) removes the least recently used first and only until the images' own layers add up to at
    most that (used ones count but stay); an untagged repository image a killed build left is always
    taken with the rest."""
    api = _api()
    narrowed = re.compile(match) if match else None
    try:
        before = _df(api)
        used = _used_image_ids(api)
        report = PruneReport(dry_run=dry_run)
        for image in before.get("Images") or []:
            candidate = _candidate(image, narrowed, used)
            if candidate is not None:
                report.images.append(candidate)
        if keep_under is not None:
            _budget(report.images, keep_under)
        if dry_run:
            return report
        for chosen in report.images:
            if chosen.chosen:
                _remove(api, chosen)
        report.freed = int(before.get("LayersSize") or 0) - int(_df(api).get("LayersSize") or 0)
        return report
    finally:
        api.close()


def _remove(api: docker.APIClient, chosen: PrunedImage) -> None:
    """Untag each chosen tag (an untagged one: remove it by id); the image goes with its last tag, never
    forced (a container created meanwhile wins)."""
    try:
        for name in chosen.tags or [chosen.id]:
            api.remove_image(name, noprune=False)
    except APIError as error:
        chosen.error = str(error.explanation or error).splitlines()[0]
        return
    try:
        api.inspect_image(chosen.id)
        chosen.error = "untagged, but kept: it has other tags"
    except (ImageNotFound, NotFound):
        chosen.removed = True
        log.info("images.removed", tags=chosen.tags, size=chosen.size)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.I)


def parse_size(text: str) -> int:
    """Bytes of a size such as `20GB`, `500M`, `1.5GiB` or `0` (decimal units; `i`: binary); ValueError
    naming the accepted forms."""
    found = _SIZE.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a size: write e.g. 20GB, 500MB, 1.5GiB or 0")
    number, unit, binary = float(found.group(1)), found.group(2).lower(), bool(found.group(3))
    return int(number * (1024 if binary else 1000) ** "_kmgt".index(unit or "_"))


__all__ = ["PruneReport", "PrunedImage", "PullError", "PullOptions", "PullProgress", "classify", "ensure_image",
           "image_present", "parse_size", "prune_images", "prunable", "pull_once", "split_reference", "with_registry"]
