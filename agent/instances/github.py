"""Reading GitHub issues through the REST API (token from GITHUB_TOKEN, rate limits respected)."""

from __future__ import annotations

import os
import re
import time

import httpx
from pydantic import BaseModel
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

ISSUE_URL = re.compile(r"^https?://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)/issues/(?P<number>\d+)/?$")
MAX_RATE_LIMIT_WAIT_S = 60.0


class GitHubError(RuntimeError):
    """The issue could not be read; the message says what to do."""


class GitHubIssue(BaseModel):
    owner: str
    repo: str
    number: int
    title: str
    body: str
    url: str

    @property
    def repo_url(self) -> str:
        return f"https://github.com/{self.owner}/{self.repo}.git"

    def text(self) -> str:
        """The issue as the model sees it: title, blank line, body."""
        return f"{self.title}\n\n{self.body}".strip()


def api_base() -> str:
    return os.environ.get("CWM_GITHUB_API", "https://api.github.com").rstrip("/")


class _Retryable(Exception):
    pass


def _retryable(error: BaseException) -> bool:
    return isinstance(error, (_Retryable, httpx.TransportError))


@retry(retry=retry_if_exception(_retryable), stop=stop_after_attempt(4),
       wait=wait_exponential(multiplier=0.5, max=8), reraise=True)
def _get(client: httpx.Client, url: str) -> httpx.Response:
    response = client.get(url)
    if response.status_code >= 500:
        raise _Retryable(f"{response.status_code} from {url}")
    if response.status_code in (403, 429) and response.headers.get("x-ratelimit-remaining") == "0":
        reset = float(response.headers.get("x-ratelimit-reset", "0"))
        wait = max(0.0, reset - time.time())
        if wait > MAX_RATE_LIMIT_WAIT_S:
            raise GitHubError(
                f"GitHub rate limit reached until {time.strftime('%H:%M:%S', time.localtime(reset))}; "
                "set GITHUB_TOKEN to a personal access token for a higher limit"
            )
        time.sleep(wait + 0.5)
        raise _Retryable("rate limited")
    return response


def fetch_issue(url: str, timeout_s: float = 30.0) -> GitHubIssue:
    """Read one issue given its github.com URL."""
    match = ISSUE_URL.match(url.strip())
    if not match:
        raise GitHubError(f"{url} is not a GitHub issue URL (https://github.com/OWNER/REPO/issues/N)")
    owner, repo, number = match["owner"], match["repo"], int(match["number"])
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    token = os.environ.get("GITHUB_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(headers=headers, timeout=timeout_s) as client:
        try:
            response = _get(client, f"{api_base()}/repos/{owner}/{repo}/issues/{number}")
        except (httpx.TransportError, _Retryable) as error:
            raise GitHubError(f"cannot reach the GitHub API at {api_base()} ({error}); check the network") from None
    if response.status_code == 404:
        raise GitHubError(f"{url}: no such issue (or the repository is private: set GITHUB_TOKEN)")
    if response.status_code == 401:
        raise GitHubError("GitHub rejected GITHUB_TOKEN (401); set a valid token or unset it")
    if response.status_code != 200:
        raise GitHubError(f"{url}: GitHub answered {response.status_code}: {response.text[:200]}")
    data = response.json()
    return GitHubIssue(owner=owner, repo=repo, number=number, title=data.get("title") or "",
                       body=data.get("body") or "", url=url)
