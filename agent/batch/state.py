"""Bookkeeping of a batch run: the run directory, its append-only status log, manifest and preds.

Crash safety rests on one rule: **status.log is the only source of truth, and every other file is
derived from it or committed before it.** Each state change is one JSON line appended, flushed and
fsynced (`start` when an episode is handed to a worker, `done`/`error` once its files are in place,
`abandoned` when a resumed run finds an episode that was running when the runner died). Opening a run
replays the log (a torn last line from a kill mid-write is cut off), so a SIGKILL at any instant
loses at most the episodes that were running; manifest.json and preds.jsonl are rewritten from the
replayed state (write to a temporary file, then os.replace) and are never read back.

What a resume (`agent batch --resume`) does with each state, after a kill or a fault at any instant:
- done: kept, never run again;
- running (the runner died): abandoned, its partial trajectory kept aside, run again from scratch;
- error of kind `infra` (agent.episode.failures: the sandbox, Docker daemon, model server, a Ray
  worker or the disk failed): run again, always; such an error is not an outcome, so its instance
  gets no prediction and no vote until it is redone;
- error of kind `model` or `episode`: kept unless `--redo-errors`;
- a first start killed before its first session event was durable (`RunLayout.half_made`): the
  start is made again;
- a full disk: the write that failed left nothing behind (temporary files are removed, a refused
  status line is cut off again), so once space is freed the run continues from its last commit.

Run directory (DIR):

    manifest.json        run id, config, model, instance list hash, per instance and sample: status,
                         attempts, error and its kind, timings, tokens, ending, resolved; the vote per
                         instance; totals with errors by kind (agent.batch.manifest)
    status.log           the append-only event log (JSON Lines) described above
    instances.jsonl      the instance list of the run, frozen at its first start
    preds.jsonl          SWE-bench predictions: one line per finished instance, the voted patch
    trajectories/<instance_id>/
        <k>.traj.jsonl           sample k's trajectory (only for finished samples; its end record
                                 carries the evaluation when the run grades)
        <k>.patch                the submitted patch, when there was one
        <k>.sandbox.diff         the sandbox's own git diff at the end
        <k>.traces/              with --trace-tests: `before/` and `after/`, one folder per test (trace.jsonl,
                                 prompt.txt, output.txt, sources.json; agent.worldmodel.traced_tests),
                                 referenced from the trajectory's end record (agent.batch.tracing)
        <k>.running/             the episode in progress (solve's live files; `agent view DIR`
                                 shows it as running)
        <k>.attempt<a>.partial.jsonl   trajectory of attempt a, killed with the runner (kept aside)
        <k>.attempt<a>.error.jsonl     trajectory of attempt a, which ended in an error (kept aside)
        <k>.attempt<a>.error.traces/   with --trace-tests: the traces attempt a took before its error (the
                                       phases it reached), referenced from that trajectory; kept only while
                                       the error is the sample's outcome (`tidy_traces`)

The kept-aside files do not end in .traj.jsonl, so exports and the viewer's run table skip them;
`agent view FILE` still opens one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel

from agent.batch.manifest import InstanceRecord, Manifest, SampleRecord, Totals
from agent.batch.status_log import (
    AbandonedEvent,
    BatchRefused,
    DoneEvent,
    EpisodeSummary,
    ErrorEvent,
    RunConfig,
    SessionEvent,
    StartEvent,
    StatusLog,
    utc_now,
)
from agent.batch.tracing import error_dir, error_dirs, sample_dir, staging_dirs, unreference
from agent.batch.voting import Candidate, Vote, candidate, choose, preds_name, read_regressions
from agent.episode.failures import Failure, disk_full
from agent.instances.records import Instance, Prediction

log = structlog.get_logger()

TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files: `.<name>.<random>.tmp` beside the target


def safe_name(instance_id: str) -> str:
    """A file name for an instance id (SWE-bench ids are already safe; anything else is made so)."""
    name = re.sub(r"[^A-Za-z0-9_.@+=-]", "_", instance_id)
    return name if name.strip(".") else f"_{name}"


def _file_mode() -> int:
    """What open() would give a new file here (0666 less the umask); mkstemp's own 0600 would hide a
    run's files from the other users of a shared machine."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers (and a later resume) see the old or the new file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, _file_mode())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def instances_digest(instances: Sequence[Instance]) -> str:
    """sha256 of the instance list (order included: it is the scheduling and preds order)."""
    h = hashlib.sha256()
    for instance in instances:
        h.update(json.dumps(instance.model_dump(mode="json"), sort_keys=True).encode() + b"\n")
    return h.hexdigest()


# -- the run directory -------------------------------------------------------------------------------


class RunLayout:
    """Where each file of a run lives (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.manifest = self.root / "manifest.json"
        self.status_log = self.root / "status.log"
        self.instances = self.root / "instances.jsonl"
        self.preds = self.root / "preds.jsonl"
        self.trajectories = self.root / "trajectories"

    def instance_dir(self, instance_id: str) -> Path:
        return self.trajectories / safe_name(instance_id)

    def trajectory(self, instance_id: str, sample: int) -> Path:
        return self.instance_dir(instance_id) / f"{sample}.traj.jsonl"

    def patch(self, instance_id: str, sample: int) -> Path:
        return self.instance_dir(instance_id) / f"{sample}.patch"

    def sandbox_diff(self, instance_id: str, sample: int) -> Path:
        return self.instance_dir(instance_id) / f"{sample}.sandbox.diff"

    def traces(self, instance_id: str, sample: int) -> Path:
        return self.instance_dir(instance_id) / sample_dir(sample)

    def error_traces(self, instance_id: str, sample: int, attempt: int) -> Path:
        return self.instance_dir(instance_id) / error_dir(sample, attempt)

    def running_dir(self, instance_id: str, sample: int) -> Path:
        return self.instance_dir(instance_id) / f"{sample}.running"

    def aside(self, instance_id: str, sample: int, attempt: int, kind: Literal["partial", "error"]) -> Path:
        return self.instance_dir(instance_id) / f"{sample}.attempt{attempt}.{kind}.jsonl"

    def _birth_files(self) -> list[Path] | None:
        """The files of a run's first start (instances.jsonl, its temporary file, status.log), or None
        if the directory holds anything else."""
        if not self.root.is_dir():
            return None
        entries = list(self.root.iterdir())
        temporary = (f".{self.instances.name}.", TEMP_SUFFIX)
        born = [p for p in entries if p in (self.instances, self.status_log)
                or (p.name.startswith(temporary[0]) and p.name.endswith(temporary[1]))]
        return born if len(born) == len(entries) else None

    def half_made(self) -> bool:
        """A first start killed before its first session event was durable: only birth files, and a
        status log (if any) without one complete session line. Such a run has nothing to keep."""
        born = self._birth_files()
        if not born:
            return False
        if not self.status_log.exists():
            return True
        return not any(isinstance(e, SessionEvent) for e in StatusLog.replay(self.status_log))

    def clear_birth(self) -> None:
        for path in self._birth_files() or []:
            path.unlink(missing_ok=True)


class BatchState:
    """The replayed status of every (instance, sample) and the writers of the derived files.

    Used from the driver thread only: one writer, so no locking.
    """

    MANIFEST_MIN_INTERVAL_S = 1.0  # start events rewrite the manifest at most this often

    def __init__(self, layout: RunLayout, instances: Sequence[Instance], config: RunConfig, run_id: str,
                 created_at: datetime) -> None:
        self.layout = layout
        self.instances = list(instances)
        self.config = config
        self.run_id = run_id
        self.created_at = created_at
        self.model_name: str | None = None
        self.sessions: list[dict[str, Any]] = []
        self.records: dict[str, InstanceRecord] = {
            i.instance_id: InstanceRecord(
                instance_id=i.instance_id, samples=[SampleRecord(sample=k) for k in range(config.samples)]
            )
            for i in self.instances
        }
        self.digest = instances_digest(self.instances)
        self.abandoned: list[tuple[str, int, int]] = []
        self._votes: dict[str, Vote] = {}  # per finished instance; dropped when its samples change
        self._log: StatusLog | None = None
        self._manifest_written = 0.0

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, instances: Sequence[Instance], config: RunConfig, *, resume: bool,
             executor: str = "local", workers: int = 1, run_id: str | None = None) -> BatchState:
        """Start a new run in an empty `root`, or (resume=True) continue the run already there.

        Refuses (BatchRefused) a non-empty directory without resume, a directory that holds something
        other than a run, and a resume with other instances or another config.
        """
        layout = RunLayout(root)
        _check_unique(instances)
        if resume and layout.half_made():
            layout.clear_birth()  # a first start killed before its first session event: start it again
        existing = layout.root.exists() and any(layout.root.iterdir())
        has_run = layout.status_log.exists()
        if existing and not resume:
            raise BatchRefused(f"{root} is not empty (an earlier run?): pass --resume to continue it, "
                               "or choose another --output")
        if existing and not has_run:
            raise BatchRefused(f"{root} is not empty and holds no batch run to resume; choose another --output")
        layout.root.mkdir(parents=True, exist_ok=True)
        events = StatusLog.replay(layout.status_log) if has_run else []
        sessions = [e for e in events if isinstance(e, SessionEvent)]
        if sessions:
            first = sessions[0]
            state = cls(layout, instances, config, first.run_id, first.at)
            if first.instances_sha256 != state.digest:
                raise BatchRefused(f"the instances differ from those of the run in {root}; pass the same "
                                   "INSTANCES (see its instances.jsonl) or choose another --output")
            changed = config.differences(first.config)
            if changed:
                raise BatchRefused(f"{', '.join(changed)} differ from the run in {root}; resume with the same "
                                   "settings (see its manifest.json) or choose another --output")
            for event in events:
                state._apply(event)
        else:
            state = cls(layout, instances, config, run_id or _new_run_id(), utc_now())
            atomic_write(layout.instances, "".join(i.model_dump_json() + "\n" for i in instances))
        state._log = StatusLog(layout.status_log)
        session = SessionEvent(run_id=state.run_id, executor=executor, workers=workers, resume=bool(sessions),
                               config=config, instances_sha256=state.digest)
        state._append(session)
        state._abandon_running()
        state.write_manifest(force=True)
        state.write_preds()
        return state

    def _abandon_running(self) -> None:
        """Episodes left 'running' by a dead runner go back to pending; their files are put aside."""
        for record in self.records.values():
            for sample in record.samples:
                running = self.layout.running_dir(record.instance_id, sample.sample)
                if sample.status != "running":
                    if running.exists():  # the runner died after committing the outcome, before tidying
                        _remove_tree(running)
                    self.tidy_traces(record.instance_id, sample.sample)
                    continue
                kept = None
                partial = next(running.rglob("*.traj.jsonl"), None) if running.is_dir() else None
                if partial is not None:
                    target = self.layout.aside(record.instance_id, sample.sample, sample.attempts, "partial")
                    os.replace(partial, target)
                    kept = str(target.relative_to(self.layout.root))
                _remove_tree(running)
                for stale in (self.layout.trajectory(record.instance_id, sample.sample),
                              self.layout.patch(record.instance_id, sample.sample),
                              self.layout.sandbox_diff(record.instance_id, sample.sample)):
                    stale.unlink(missing_ok=True)  # written by the dead attempt but never committed
                _remove_tree(self.layout.traces(record.instance_id, sample.sample))
                self._append(AbandonedEvent(instance_id=record.instance_id, sample=sample.sample,
                                            attempt=sample.attempts, kept=kept))
                self.tidy_traces(record.instance_id, sample.sample)  # after: the sample is pending now
                self.abandoned.append((record.instance_id, sample.sample, sample.attempts))

    def tidy_traces(self, instance_id: str, sample: int) -> None:
        """Keep an errored attempt's traces only while that error is the sample's outcome, and no
        half-unpacked traces: the folders of other attempts (retried, abandoned, or made obsolete by
        a later outcome) go, their kept-aside trajectories first told why their records lost their
        paths, and `write_traces` staging folders left by a kill go too.

        Idempotent, so a kill at any instant of it is finished by the next open (which calls it for
        every sample): a trajectory is rewritten before its folder is removed.
        """
        record = self.sample(instance_id, sample)
        keep = record.attempts if record.status == "error" else None
        for attempt, folder in sorted(error_dirs(self.layout.instance_dir(instance_id), sample).items()):
            if attempt == keep:
                continue
            aside = self.layout.aside(instance_id, sample, attempt, "error")
            if aside.exists():
                why = (f"not kept: attempt {attempt} ended in an error and the sample was run again "
                       "(its later attempt traced these tests anew)")
                atomic_write(aside, unreference(aside.read_text(encoding="utf-8"), folder.name, why))
            _remove_tree(folder)
        for staging in staging_dirs(self.layout.instance_dir(instance_id), sample):
            _remove_tree(staging)

    def _append(self, event: BaseModel) -> None:
        assert self._log is not None
        self._log.append(event)
        self._apply(event)

    def _apply(self, event: Any) -> None:
        """Fold one event into the in-memory state (used by replay and by live updates alike)."""
        if isinstance(event, SessionEvent):
            self.sessions.append(event.model_dump(mode="json", exclude={"config", "event"}))
            return
        sample = self.records[event.instance_id].samples[event.sample]
        self._votes.pop(event.instance_id, None)
        if isinstance(event, StartEvent):
            sample.status, sample.attempts = "running", event.attempt
            sample.started_at, sample.ended_at, sample.error = event.at, None, None
            sample.error_kind = sample.error_cause = sample.traces = None
        elif isinstance(event, DoneEvent):
            sample.status, sample.ended_at, sample.error = "done", event.at, None
            sample.summary = event.summary
            sample.trajectory = str(self.layout.trajectory(event.instance_id, event.sample)
                                    .relative_to(self.layout.root))
            sample.traces = str(self.layout.traces(event.instance_id, event.sample).relative_to(self.layout.root)) \
                if event.summary.trace_phases else None
            if self.model_name is None and event.summary.model_name:
                self.model_name = event.summary.model_name
        elif isinstance(event, ErrorEvent):
            sample.status, sample.ended_at, sample.error = "error", event.at, event.error
            sample.error_kind, sample.error_cause = event.kind, event.cause
            sample.summary, sample.trajectory = event.summary, None
            folder = self.layout.error_traces(event.instance_id, event.sample, event.attempt)
            sample.traces = str(folder.relative_to(self.layout.root)) if event.summary.trace_phases else None
        elif isinstance(event, AbandonedEvent):
            sample.status, sample.started_at, sample.traces = "pending", None, None

    # -- transitions -------------------------------------------------------------------------------

    def todo(self, redo_errors: bool = False) -> list[tuple[Instance, int]]:
        """(instance, sample) pairs still to run, instance by instance so instances finish early:
        pending ones, infrastructure errors always, other errors only with `redo_errors`."""
        def wanted(s: SampleRecord) -> bool:
            return s.status == "pending" or (s.status == "error" and (redo_errors or s.error_kind == "infra"))

        return [(instance, s.sample) for instance in self.instances
                for s in self.records[instance.instance_id].samples if wanted(s)]

    def sample(self, instance_id: str, sample: int) -> SampleRecord:
        return self.records[instance_id].samples[sample]

    def start(self, instance_id: str, sample: int, slot: int = 0) -> int:
        """Record that an episode was handed to a worker; returns its attempt number (1-based)."""
        attempt = self.sample(instance_id, sample).attempts + 1
        self._append(StartEvent(instance_id=instance_id, sample=sample, attempt=attempt, slot=slot))
        self.write_manifest()
        return attempt

    def done(self, instance_id: str, sample: int, attempt: int, summary: EpisodeSummary) -> None:
        """Record a finished episode; its files must already be in place (this is the commit point)."""
        self._append(DoneEvent(instance_id=instance_id, sample=sample, attempt=attempt, summary=summary))
        self._after_outcome(instance_id)

    def error(self, instance_id: str, sample: int, attempt: int, message: str,
              summary: EpisodeSummary | None = None, failure: Failure | None = None) -> None:
        """Record an errored episode with whose failure it was (default: the episode's own)."""
        failure = failure or Failure(kind="episode")
        self._append(ErrorEvent(instance_id=instance_id, sample=sample, attempt=attempt, error=message,
                                kind=failure.kind, cause=failure.cause, summary=summary or EpisodeSummary()))
        self._after_outcome(instance_id)

    def _after_outcome(self, instance_id: str) -> None:
        if self.records[instance_id].finished:
            self.write_preds()
        self.write_manifest(force=True)

    def close(self) -> None:
        """Rewrite the derived files and close the log. On a full disk the derived files are left as
        they were (the next start rewrites them from the log) and the log is closed all the same."""
        try:
            self.write_manifest(force=True)
            self.write_preds()
        except OSError as error:
            if not disk_full(error):
                raise
            log.warning("batch.derived_files_not_written", error=str(error))
        finally:
            if self._log is not None:
                self._log.close()

    # -- derived files ----------------------------------------------------------------------------

    def candidates(self, instance_id: str) -> list[Candidate]:
        """The instance's finished samples as the vote sees them (errored ones do not take part)."""
        record = read_regressions(self.layout.instance_dir(instance_id))
        found = []
        for s in self.records[instance_id].samples:
            if s.status != "done" or s.summary is None:
                continue
            patch_path = self.layout.patch(instance_id, s.sample)
            patch = patch_path.read_text(encoding="utf-8") if s.summary.has_patch and patch_path.exists() else None
            found.append(candidate(s.sample, patch, s.summary, record))
        return found

    def vote(self, instance_id: str) -> Vote:
        """Choose among the instance's finished samples by the run's selection method (agent.batch.voting)."""
        if instance_id not in self._votes:
            self._votes[instance_id] = choose(self.candidates(instance_id), self.config.select)
        return self._votes[instance_id]

    def forget_vote(self, instance_id: str) -> None:
        """Drop a cached vote whose inputs changed (regressions measured after the episodes)."""
        self._votes.pop(instance_id, None)

    def write_preds(self) -> None:
        """preds.jsonl: one line per instance whose samples have all finished, in instance order."""
        name = preds_name(self.config.model_name or self.model_name or self.config.model, self.config.select)
        lines = []
        for instance in self.instances:
            record = self.records[instance.instance_id]
            if not record.finished:
                record.vote = None
                continue
            vote = self.vote(instance.instance_id)
            record.vote = vote.summary()
            pred = Prediction(instance_id=instance.instance_id, model_name_or_path=name, model_patch=vote.patch)
            lines.append(pred.model_dump_json() + "\n")
        atomic_write(self.layout.preds, "".join(lines))

    def totals(self) -> Totals:
        totals = Totals()
        for record in self.records.values():
            for s in record.samples:
                setattr(totals, s.status, getattr(totals, s.status) + 1)
                if s.status == "error":
                    kind = f"{s.error_kind or 'episode'}_errors"
                    setattr(totals, kind, getattr(totals, kind) + 1)
                if s.summary is None:
                    continue
                totals.prompt_tokens += s.summary.prompt_tokens
                totals.completion_tokens += s.summary.completion_tokens
                totals.episode_seconds += s.summary.elapsed_s
                if s.status == "done":
                    totals.submitted += int(s.summary.has_patch)
                    if s.summary.evaluation is not None:
                        totals.graded += 1
                        totals.resolved += int(s.summary.evaluation.resolved)
        totals.episode_seconds = round(totals.episode_seconds, 3)
        return totals

    def manifest(self) -> Manifest:
        return Manifest(
            run_id=self.run_id, created_at=self.created_at, config=self.config, model_name=self.model_name,
            instances_sha256=self.digest, instance_count=len(self.instances), sessions=self.sessions,
            totals=self.totals(), instances=[self.records[i.instance_id] for i in self.instances],
        )

    def write_manifest(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._manifest_written < self.MANIFEST_MIN_INTERVAL_S:
            return
        self._manifest_written = now
        atomic_write(self.layout.manifest, self.manifest().model_dump_json(indent=1) + "\n")


def _check_unique(instances: Iterable[Instance]) -> None:
    seen: set[str] = set()
    for instance in instances:
        name = safe_name(instance.instance_id)
        if name in seen:
            raise BatchRefused(f"instance id {instance.instance_id!r} appears twice (after making it a file "
                               "name); give every instance its own id")
        seen.add(name)


def _new_run_id() -> str:
    return time.strftime("batch-%Y%m%d-%H%M%S-") + os.urandom(3).hex()


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
