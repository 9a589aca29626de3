"""The trajectory format: one JSON Lines file per episode, a header, one record per step, an ending.

Every line is one of the pydantic models below, told apart by its `type` field. The file is appended
and flushed after every step (see `traces.recorder`), so a run killed at any point keeps every
completed step; readers tolerate a torn last line. Documented in docs/trajectory-format.md.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter

FORMAT_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class ModelInfo(BaseModel):
    kind: str = Field(description="'completions' (CWM raw), 'chat' (OpenAI-compatible) or 'replay'")
    name: str = ""
    url: str = ""
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    constrained: bool = False


class ProtocolSettings(BaseModel):
    """The limits an episode ran under. The defaults are what a file without them is read as; they
    equal the protocol's (agent.protocol.prompts, sandbox.base), which this bottom layer cannot import,
    and tests/agent/protocol/test_prompts.py pins them to each other."""

    max_turns: int = 128
    context_size: int = 131072
    timeout_s: float = 120.0
    max_reply_tokens: int = 65536
    tools: list[str] = Field(default_factory=lambda: ["bash", "edit", "create", "submit"])


class Header(BaseModel):
    type: Literal["header"] = "header"
    format_version: int = FORMAT_VERSION
    run_id: str
    instance_id: str
    repo: str = ""
    commit: str = ""
    image: str = ""
    image_digest: str = ""
    image_source: str = Field("", description="bwrap: the Docker image the root filesystem was exported from")
    sandbox_backend: str = "docker"
    workdir: str = "/testbed"
    start_script: str = Field("", description="the shell run at every session start, before the first command and "
                              "never shown to the model (sandbox.session.startup_script); empty in older files")
    repo_in_image: bool = Field(False, description="the repository was the image's own /testbed (not copied in)")
    base_patch: str = Field("", description="repo_in_image: the patch `commit` was made from, applied to the image's "
                            "HEAD in the sandbox because the image lacks the base (SWE-smith's bug patch, "
                            "agent.episode.base_patch); a replay makes the same commit. Never shown to the model")
    base_hidden: list[str] = Field(default_factory=list, description="with base_patch: the files the made commit "
                                   "leaves out (SWE-smith's FAIL_TO_PASS test files); a replay leaves out the same")
    repo_from: Literal["", "image-cache", "image-build", "copy", "image"] = Field(
        "", description="how the repository got to `workdir`: image-cache (started from an existing repository "
        "image, nothing copied), image-build (copied once into a new repository image, started from it), copy "
        "(copied into the sandbox), image (the image's own repository); empty in older files")
    repo_prepare_s: float | None = Field(None, description="seconds spent getting the repository to `workdir` "
                                         "(host work, copy or image, placement), the sandbox's start not counted")
    repo_image: str = Field("", description="the repository image the sandbox started from (image-cache, image-build)")
    model: ModelInfo
    protocol: ProtocolSettings = Field(default_factory=ProtocolSettings)
    runner_version: str = ""
    started_at: datetime = Field(default_factory=utc_now)
    system_prompt: str = ""
    user_prompt: str = ""
    issue: str = ""
    extra: dict[str, Any] = Field(default_factory=dict, description="fields of imported formats (e.g. CWM's)")


class ToolCall(BaseModel):
    name: str
    body: str


class Step(BaseModel):
    """One model reply and what the runner did with it.

    `prompt_delta` is the exact text appended to the model's input since the previous call (for the
    first step: the whole prompt). `observation` is the message content exactly as the model will see
    it next (with `observation_role` as its role); `output` is the tool's raw output before wrapping.
    """

    type: Literal["step"] = "step"
    index: int
    prompt_delta: str = ""
    raw_reply: str
    finish_reason: str | None = None
    tool_call: ToolCall | None = None
    parse_error: str | None = None
    observation: str | None = None
    observation_role: str | None = None
    output: str | None = None
    exit_code: int | None = None
    timed_out: bool = False
    overflowed: bool = False
    session_died: bool = False
    cwd: str | None = None
    command_duration_s: float | None = None
    model_latency_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    observation_tokens: int | None = None
    diff_stat: str | None = None
    submission: str | None = None
    started_at: datetime = Field(default_factory=utc_now)
    ended_at: datetime | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="fields of imported formats (e.g. CWM's)")


class Evaluation(BaseModel):
    resolved: bool
    empty_patch: bool = False
    patch_applied: bool | None = Field(None, description="None: not recorded (older trajectories)")
    apply_method: str | None = Field(None, description="the command of the official apply chain that applied it")
    error: str | None = Field(None, description="the harness failed (not the patch): why")
    fail_to_pass: dict[str, bool] = Field(default_factory=dict)
    pass_to_pass: dict[str, bool] = Field(default_factory=dict)
    log: str = ""


class TracedTest(BaseModel):
    """One repository test traced by `agent solve --trace-tests`, before or after the episode.

    The trace itself lives in files next to the trajectory (`path`); the trajectory keeps only this
    summary, so a reader that knows nothing of traces loses nothing but the reference. See
    docs/trajectory-format.md ("test traces").
    """

    node_id: str = Field(description="pytest node id, relative to the repository")
    phase: Literal["before", "after"] = Field(description="before the episode, or on the final working tree")
    path: str | None = Field(None, description="directory of trace.jsonl and prompt.txt, relative to the "
                                                "trajectory's directory; None when no trace was made")
    outcome: Literal["passed", "failed", "error", "unknown"] = Field(
        "unknown", description="the test's result from pytest's exit code; unknown when the tracer stopped it")
    exit_code: int | None = Field(None, description="pytest's exit code")
    status: str | None = Field(None, description="the trace's end status: returned, raised, max_frames, ...")
    frames: int = 0
    error: str | None = Field(None, description="why there is no (complete) trace")
    wall_s: float = 0.0


class Ending(BaseModel):
    type: Literal["end"] = "end"
    status: Literal[
        "submitted", "max_turns", "context_exceeded", "wall_clock", "reply_too_long", "error", "interrupted"
    ]
    reason: str = ""
    steps: int = 0
    submission: str | None = None
    sandbox_diff: str | None = None
    final_response: str | None = None
    evaluation: Evaluation | None = None
    total_prompt_tokens: int = 0
    total_completion_tokens: int = 0
    ended_at: datetime = Field(default_factory=utc_now)
    test_traces: list[TracedTest] = Field(default_factory=list, description="`agent solve --trace-tests`")
    extra: dict[str, Any] = Field(default_factory=dict)


Record = Annotated[Union[Header, Step, Ending], Field(discriminator="type")]
RECORD_ADAPTER: TypeAdapter[Header | Step | Ending] = TypeAdapter(Record)


class Trajectory(BaseModel):
    """A trajectory held in memory: what `traces.recorder.read_trajectory` returns."""

    header: Header
    steps: list[Step] = Field(default_factory=list)
    ending: Ending | None = None
    torn_tail: bool = Field(default=False, description="the file ended in a partial line (killed run)")
