"""A real `agent batch --trace-tests failing` run over the PyPI fixture instances, shared by the batch,
export and viewer tests (tests/agent/conftest.py makes it one session fixture).

Why real: what must hold is about real files and real runs — the tracer in each episode's sandbox,
the instance's test patch applied for the traces and undone before the model looks, the traces
carried back as data and written by the driver, the trajectory's paths pointing at them.

The model is scripted (a replay file per instance, tests/helpers.write_replies): it looks at the
working tree first (what it sees must not show the tracing), applies the instance's gold patch with
`git apply`, and submits the diff. So the FAIL_TO_PASS tests fail before the episode and pass after.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from agent.batch.progress import LogProgress
from agent.batch.run import BatchRequest, BatchResult, run_batch
from agent.batch.tracing import TraceTests
from agent.instances.records import Instance
from agent.instances.sources import load_instances
from tests.helpers import REPO_ROOT, bash, write_replies

PYPI = REPO_ROOT / "tests" / "fixtures" / "pypi"
# Three of the four fixtures: each failing test fails INSIDE the test function before the fix (so its
# trace ends in the failure) and passes after it. wcwidth's gold patch is 56 KB of tables: left out
# only to keep the run short.
TRACED = ("six-1.14.0", "idna-3.4", "more-itertools-11.0.1")
LOOK = "git status --porcelain --ignored; git stash list; ls"


def gold_replies(instance: Instance) -> list[str]:
    """Look, apply the gold patch, write the diff, submit, answer."""
    marker = "CWM_GOLD_PATCH_END"
    assert marker not in instance.patch
    apply = (f"cat > /tmp/gold.patch <<'{marker}'\n{instance.patch.rstrip(chr(10))}\n{marker}\n"
             "git apply /tmp/gold.patch && git diff > /tmp/fix.patch && git diff --stat")
    return [bash(LOOK, "Let me look at the repository first."), bash(apply, "Applying the fix."),
            "The fix is in place.\n</think>\n\n<tool: submit>\n/tmp/fix.patch\n</tool>",
            "The patch fixes the bug.\n</think>\n\nDone: the fix is submitted."]


@dataclass
class TracedBatch:
    output: Path
    result: BatchResult
    instances: dict[str, Instance]


def run_traced_batch(root: Path, image: str, select: str = "failing", workers: int = 2,
                     executor: str = "local") -> TracedBatch:
    instances = [i for i in load_instances(PYPI / "instances.jsonl") if i.instance_id in TRACED]
    replies = root / "replies"
    replies.mkdir(parents=True)
    for instance in instances:
        write_replies(replies / f"{instance.instance_id}.jsonl", gold_replies(instance))
    output = root / "run"
    request = BatchRequest(instances=instances, output=output, model=f"replay:{replies}/{{instance_id}}.jsonl",
                           workers=workers, image=image, trace_tests=TraceTests.from_words([select]),
                           executor=executor)  # type: ignore[arg-type]
    result = run_batch(request, progress=LogProgress(Console(file=io.StringIO(), width=200)))
    return TracedBatch(output=output, result=result, instances={i.instance_id: i for i in instances})
