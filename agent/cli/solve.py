"""`agent solve`: one issue, one repository, one episode, with a live line per step."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from agent.cli.common import default_of, fail, step_line
from agent.episode.solve import SolveRequest
from agent.models.factory import DEFAULT_MODEL_URL
from agent.protocol.prompts import MAX_TURNS
from agent.worldmodel.run import TraceLimits
from sandbox.base import DEFAULT_TIMEOUT_S
from traces import EXAMPLES_DIR

MODEL_HELP = "CWM server URL (raw /v1/completions), chat:URL, or replay:TRAJECTORY"


def read_issue(issue: Optional[str], issue_file: Optional[Path], github_issue: Optional[str]) -> str:
    """The issue text from exactly one of the three options."""
    given = [x for x in (issue, issue_file, github_issue) if x is not None]
    if len(given) != 1:
        fail("give exactly one of --issue TEXT, --issue-file FILE or --github-issue URL")
    if issue is not None:
        return issue
    if issue_file is not None:
        try:
            return issue_file.read_text(encoding="utf-8")
        except OSError as error:
            fail(f"cannot read --issue-file {issue_file}: {error.strerror}")
    from agent.instances.github import GitHubError, fetch_issue

    try:
        return fetch_issue(github_issue or "").text()
    except GitHubError as error:
        fail(str(error))


def sandbox_backend(name: str):  # noqa: ANN201 - a Sandbox class
    """The Sandbox class a --sandbox name selects."""
    if name == "docker":
        from sandbox.docker import DockerSandbox

        return DockerSandbox
    if name == "bwrap":
        from sandbox.bwrap import BwrapSandbox

        return BwrapSandbox
    fail(f"unknown --sandbox {name!r}; choose docker or bwrap")


def constraint(mode: str) -> Optional[str]:
    """The reply regex a --constrained mode selects (None: unconstrained)."""
    from agent.protocol.constrained import bounded_reply_regex, reply_regex

    choices = {"off": None, "exact": reply_regex(), "bounded": bounded_reply_regex()}
    if mode not in choices:
        fail(f"unknown --constrained {mode!r}; choose off, exact or bounded")
    return choices[mode]


def bundled_example(name: str) -> Path:
    """The folder of a bundled example to solve (it has a repository and an issue)."""
    folder = EXAMPLES_DIR / name
    if not (folder / "issue.md").is_file():
        known = ", ".join(sorted(p.name for p in EXAMPLES_DIR.iterdir() if (p / "issue.md").is_file()))
        fail(f"no bundled example {name!r}; known: {known}")
    return folder


def with_example(example: str, repo: Optional[str], issue_file: Optional[Path], model: str,
                 instance_id: Optional[str]) -> tuple[str, Path, str, str]:
    """--example fills in what was not given: its repository, its issue, its recorded replies."""
    folder = bundled_example(example)
    if model == DEFAULT_MODEL_URL:
        model = f"replay:{folder / 'trajectory.jsonl'}"
    return repo or str(folder / "repo"), issue_file or folder / "issue.md", model, instance_id or example


def check_trace_options(trace_tests: list[str], max_frames: int) -> None:
    """Refuse bad --trace-tests before anything starts (the request checks again for library callers)."""
    from agent.worldmodel.traced_tests import check_node_id

    for node_id in trace_tests:
        try:
            check_node_id(node_id)
        except ValueError as error:
            fail(str(error))
    if max_frames < 1:
        fail("--trace-max-frames must be at least 1")


def print_result(out: Console, result) -> None:  # noqa: ANN001 - agent.episode.solve.SolveResult
    ending = result.ending
    out.print(f"[bold]{ending.status}[/] after {ending.steps} steps: {ending.reason}", highlight=False)
    out.print(f"trajectory  {result.trajectory}")
    out.print(f"patch       {result.patch or '(none submitted)'}")
    out.print(f"sandbox git diff {result.sandbox_diff}")
    for traced in ending.test_traces:
        where = traced.path or f"no trace: {traced.error}"
        out.print(f"trace {traced.phase:<6} {traced.outcome:<7} {traced.frames:>5} frames  {traced.node_id}  {where}",
                  highlight=False, markup=False)


def solve(
    repo: Optional[str] = typer.Option(None, help="repository: a local path or a git URL"),
    commit: Optional[str] = typer.Option(None, help="commit to check out (default: HEAD)"),
    issue: Optional[str] = typer.Option(None, help="the issue text"),
    issue_file: Optional[Path] = typer.Option(None, help="file holding the issue text"),
    github_issue: Optional[str] = typer.Option(None, help="https://github.com/OWNER/REPO/issues/N"),
    model: str = typer.Option(DEFAULT_MODEL_URL, envvar="CWM_MODEL_URL", help=MODEL_HELP),
    image: Optional[str] = typer.Option(None, help="sandbox image (default: the project's base image)"),
    output: Path = typer.Option(Path("runs/solve"), help="directory for trajectory, patch and diff"),
    example: Optional[str] = typer.Option(None, help="run a bundled example offline, e.g. `intervals`"),
    allow_dirty: bool = typer.Option(False, help="include uncommitted changes of a local repository"),
    repo_cache: bool = typer.Option(default_of(SolveRequest, "repo_cache"), help="Docker: keep an image of the repository at this commit and start "
                                               "from it (made on first use; `agent images prune` removes them); "
                                               "--no-repo-cache copies the repository into every sandbox"),
    max_turns: int = typer.Option(MAX_TURNS, help=f"turn limit (protocol default {MAX_TURNS})"),
    timeout: float = typer.Option(DEFAULT_TIMEOUT_S, help="per-command timeout in seconds"),
    wall_clock: Optional[float] = typer.Option(None, help="stop the episode after this many seconds"),
    instance_id: Optional[str] = typer.Option(None, help="name for the output files"),
    sandbox: str = typer.Option("docker", help="sandbox backend: docker, or bwrap (no daemon; --image is then "
                                              "a root filesystem directory)"),
    constrained: str = typer.Option("off", help="force well-formed replies with vLLM structured outputs: off, "
                                                "exact (CWM's reply grammar), or bounded (length-capped, for "
                                                "random-weight test models)"),
    trace_tests: Optional[List[str]] = typer.Option(
        None, "--trace-tests", metavar="NODE_ID",
        help="trace this pytest test (e.g. tests/test_x.py::test_y, relative to the repository) before and after "
             "the episode; the traces go to <output>/<id>.traces/ and the viewer steps through them (repeatable)"),
    trace_max_frames: int = typer.Option(default_of(TraceLimits, "max_frames"),
                                          help="--trace-tests: frame bound of each trace"),
) -> None:
    """Solve one issue in one repository: sandbox, CWM loop, trajectory, patch."""
    from agent.episode.loop import LoopConfig
    from agent.episode.repo import RepoError
    from agent.episode.solve import solve as run_solve
    from agent.models.base import ModelError
    from agent.models.factory import make_model
    from images.build import ImageBuildError, ensure_base_image
    from sandbox.base import SandboxConfig, SandboxError

    open_sandbox = sandbox_backend(sandbox)
    reply_constraint = constraint(constrained)
    check_trace_options(trace_tests or [], trace_max_frames)
    if example is not None:
        repo, issue_file, model, instance_id = with_example(example, repo, issue_file, model, instance_id)
    if repo is None:
        fail("pass --repo PATH_OR_GIT_URL (or --example intervals)")
    issue_text = read_issue(issue, issue_file, github_issue)
    if sandbox == "bwrap" and image is None:
        fail("--sandbox bwrap needs --image ROOTFS_DIR (see `sandbox/rootfs.py` for exporting one)")
    try:
        image = image or ensure_base_image()
    except ImageBuildError as error:
        fail(str(error))
    request = SolveRequest(
        repo=repo, commit=commit, issue=issue_text, image=image, output=output, allow_dirty=allow_dirty,
        repo_cache=repo_cache,
        instance_id=instance_id, loop=LoopConfig(max_turns=max_turns, wall_clock_s=wall_clock),
        sandbox=SandboxConfig(image=image, timeout_s=timeout),
        trace_tests=trace_tests or [], trace_limits=TraceLimits(max_frames=trace_max_frames),
    )
    out = Console(soft_wrap=True)

    def open_model():  # noqa: ANN202 - agent.models.base.Model
        client = make_model(model, constraint=reply_constraint) if reply_constraint else make_model(model)
        out.print(f"[bold]solving[/] {repo} with {client.info.kind} model {client.info.name or model}",
                  highlight=False)
        return client

    try:
        result = run_solve(request, open_model, open_sandbox,
                           on_step=lambda s: out.print(step_line(s), highlight=False),
                           on_ready=lambda start: out.print(start.line(), highlight=False, markup=False))
    except (RepoError, ModelError, SandboxError, ValueError) as error:
        fail(str(error))
    print_result(out, result)
    if result.ending.status != "submitted":
        raise typer.Exit(1)
