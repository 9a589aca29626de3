"""Many predictions: K samples per instance graded in parallel, scored, written the official way too.

Grading is parallel over a thread pool, each worker with its own sandbox; results are ordered by
(instance_id, sample) so the report does not depend on scheduling. Environment images of our own
specs are built once, before the workers start, so a build failure is reported per instance
instead of racing N identical builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.grading import official
from agent.grading.evaluate import GOLD_MODEL, EvalError, EvalReport, InstanceResult, Selector, grade_detailed
from agent.grading.reports import write_official
from agent.grading.sandboxed import SandboxFactory
from agent.grading.scores import sample_scores, with_selection
from agent.grading.specs import DEFAULT_NAMESPACE, grading_spec
from agent.instances.envs import EnvRegistry, ensure_env_image, load_registry
from agent.instances.records import Instance, Prediction
from agent.instances.sources import load_instances, load_predictions

DEFAULT_RUN_ID = "cwm-eval"


class Job(Prediction):
    """One prediction to grade, with its sample index within its instance."""

    sample: int = 0


def number_samples(predictions: Sequence[Prediction]) -> list[Job]:
    """The n-th prediction of an instance (in file order) is its sample n-1."""
    seen: dict[str, int] = {}
    jobs = []
    for prediction in predictions:
        sample = seen.get(prediction.instance_id, 0)
        seen[prediction.instance_id] = sample + 1
        jobs.append(Job(**prediction.model_dump(), sample=sample))
    return jobs


def _build_images(instances: Sequence[Instance], registry: EnvRegistry, namespace: str) -> dict[str, str | Exception]:
    images: dict[str, str | Exception] = {}
    for instance in instances:
        try:
            spec = grading_spec(instance, registry, namespace)
            if spec.image is None and spec.env is not None:
                images[instance.instance_id] = ensure_env_image(spec.env)
        except Exception as error:  # noqa: BLE001 - SpecError, EnvError, ImageBuildError: per instance
            images[instance.instance_id] = error
    return images


def _jobs(instances: Sequence[Instance], predictions: Sequence[Prediction] | None, gold: bool,
          report: EvalReport) -> list[Job]:
    by_id = {i.instance_id: i for i in instances}
    if gold:
        return [Job(instance_id=i.instance_id, model_name_or_path=GOLD_MODEL, model_patch=i.patch) for i in instances]
    assert predictions is not None
    report.unknown_instances = sorted({p.instance_id for p in predictions if p.instance_id not in by_id})
    report.without_prediction = sorted(set(by_id) - {p.instance_id for p in predictions})
    return [j for j in number_samples(predictions) if j.instance_id in by_id]


def _select(instances: Sequence[Instance], jobs: Sequence[Job], results: Sequence[InstanceResult],
            select: Selector) -> dict[str, bool]:
    """Each instance's chosen prediction (chosen without grades) -> whether it resolved."""
    graded = {(r.instance_id, r.sample): r.resolved for r in results}
    chosen: dict[str, bool] = {}
    for instance in instances:
        mine = [j for j in jobs if j.instance_id == instance.instance_id]
        index = select(instance, mine) if mine else None
        if index is not None:
            chosen[instance.instance_id] = graded[(instance.instance_id, mine[index].sample)]
    return chosen


def evaluate(
    instances: Sequence[Instance], predictions: Sequence[Prediction] | None, *, workers: int = 1,
    gold: bool = False, registry: EnvRegistry | None = None, open_sandbox: SandboxFactory | None = None,
    log_dir: Path | None = None, strict: bool = False, namespace: str = DEFAULT_NAMESPACE,
    select: tuple[str, Selector] | None = None,
) -> EvalReport:
    """Grade every prediction (or, with `gold`, every instance's reference patch) in parallel."""
    if workers < 1:
        raise EvalError("--workers must be at least 1")
    if predictions is None and not gold:
        raise EvalError("give a predictions file, or --gold to grade the instances' reference patches")
    by_id = {i.instance_id: i for i in instances}
    report = EvalReport(gold=gold, workers=workers, strict=strict, swebench_version=official.harness().version)
    jobs = _jobs(instances, predictions, gold, report)
    registry = registry or load_registry()
    images = _build_images([by_id[j.instance_id] for j in jobs if j.model_patch.strip()], registry, namespace)

    def one(job: Job) -> InstanceResult:
        instance, built = by_id[job.instance_id], images.get(job.instance_id)
        if gold and not job.model_patch.strip():
            return InstanceResult(instance_id=job.instance_id, model_name=GOLD_MODEL,
                                  error="the instance has no reference patch")
        if isinstance(built, Exception):
            return InstanceResult(instance_id=job.instance_id, sample=job.sample, model_name=job.model_name_or_path,
                                  error=f"environment: {built}")
        log_file = log_dir / f"{job.instance_id}.{job.sample}.log" if log_dir else None
        return grade_detailed(instance, job.model_patch, built, registry=registry, open_sandbox=open_sandbox,
                              log_file=log_file, strict=strict, namespace=namespace, sample=job.sample,
                              model_name=job.model_name_or_path)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
        report.results = sorted(pool.map(one, jobs), key=lambda r: (r.instance_id, r.sample))
    outcomes: dict[str, list[bool]] = {}
    for result in report.results:
        if result.error_kind != "infra":  # not graded: no sample of pass@k
            outcomes.setdefault(result.instance_id, []).append(result.resolved)
    report.scores = sample_scores(list(by_id), outcomes)
    if select is not None:
        report.scores = with_selection(report.scores, select[0], _select(instances, jobs, report.results, select[1]))
    return report


def run_eval(
    predictions_file: Path | None, instances_file: Path, *, workers: int = 1, gold: bool = False,
    report_path: Path | None = None, open_sandbox: SandboxFactory | None = None, strict: bool = False,
    namespace: str = DEFAULT_NAMESPACE, run_id: str = DEFAULT_RUN_ID, select: tuple[str, Selector] | None = None,
) -> EvalReport:
    """`agent eval` as a library call: load, grade, write our report and the official outputs beside it."""
    instances = load_instances(instances_file)
    predictions = load_predictions(predictions_file) if predictions_file is not None else None
    report = evaluate(instances, predictions, workers=workers, gold=gold, open_sandbox=open_sandbox, strict=strict,
                      namespace=namespace, select=select)
    report.instances_file = str(instances_file)
    report.predictions_file = str(predictions_file) if predictions_file else None
    if report_path is not None:
        root = report_path.parent
        root.mkdir(parents=True, exist_ok=True)
        written = write_official(root, run_id, [i.instance_id for i in instances], report.results,
                                 report.unknown_instances)
        report.official = [str(p) for p in written]
        report_path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return report
