"""Which image an instance runs in when its dataset ships one image per instance, and getting it.

SWE-bench and the sets built like it (SWE-Gym, SWE-smith, SWE-rebench, Multimodal) publish a prebuilt
image per instance (SWE-smith: per repository and commit) holding the repository at /testbed with its
environment installed. Such an instance runs in that image as it is (agent.episode.repo.place_in_image);
every other instance keeps the project's own environment images (agent.instances.envs) with the
repository copied in.

The image comes from the row (`Instance.image`, into which the dataset loaders map `image_name` and
`docker_image`), else from its family's naming rule (`Instance.dataset`). The rules, as each project
writes them (lower case throughout, tag `latest`):

- swe-bench, multimodal: `swebench/sweb.eval.x86_64.<instance_id, "__" -> "_1776_">` (SWE-bench's
  `instance_image_key` in `swebench/harness/test_spec/test_spec.py`; the same rule in mini-swe-agent's
  `get_swebench_docker_image_name`, `src/minisweagent/run/extra/swebench.py`, and in CWM's
  `evals/scripts/swerl/format_swerl.py`);
- swe-gym: `xingyaoww/sweb.eval.x86_64.<instance_id, "__" -> "_s_">` (OpenHands'
  `get_instance_docker_image`, `evaluation/benchmarks/swe_bench/run_infer.py`, which SWE-Gym's
  `docs/OpenHands.md` runs its rollouts with);
- swe-smith: `swebench/swesmith.x86_64.<owner>_1776_<repo>.<commit[:8]>`, one image per repository
  snapshot, named by the instance id without its last `.`-part (SWE-smith's `RepoProfile.image_name` and
  `Registry.get_from_inst`, `swesmith/profiles/base.py`; `ORG_NAME_DH` in `swesmith/constants.py`);
- swe-rebench: `swerebench/sweb.eval.x86_64.<instance_id, "__" -> "_1776_">` (SWE-bench's rule under
  the `swerebench` namespace, as Nebius' harness fork runs it: `--namespace swerebench`; its rows
  normally carry `docker_image` anyway).

`ImageOptions.prefix` replaces a rule's part before the instance-derived name (an arm64 namespace such
as `swebench/sweb.eval.arm64.`, or a local build's `sweb.eval.x86_64.`), and `registry` serves every
official image from a mirror (`mirror:5000/swebench/...`).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

from agent.instances.records import Instance
from images.registry import ProgressCallback, PullOptions, ensure_image, with_registry

# family -> (the rule's prefix, how an instance id becomes the rest of the name)
NAMING_RULES: dict[str, tuple[str, Callable[[str], str]]] = {
    "swe-bench": ("swebench/sweb.eval.x86_64.", lambda iid: iid.replace("__", "_1776_")),
    "multimodal": ("swebench/sweb.eval.x86_64.", lambda iid: iid.replace("__", "_1776_")),
    "swe-gym": ("xingyaoww/sweb.eval.x86_64.", lambda iid: iid.replace("__", "_s_")),
    "swe-smith": ("swebench/swesmith.x86_64.", lambda iid: iid.rsplit(".", 1)[0].replace("__", "_1776_")),
    "swe-rebench": ("swerebench/sweb.eval.x86_64.", lambda iid: iid.replace("__", "_1776_")),
}


class ImageError(ValueError):
    """No image can be named for an instance; the message says what to give."""


class ImageOptions(BaseModel):
    """Where official images come from, and how they are pulled (`agent batch` / `agent images pull`)."""

    registry: str | None = Field(default=None, description="serve every official image from this registry "
                                 "(host[:port][/path]), e.g. a mirror")
    prefix: str | None = Field(default=None, description="replaces a naming rule's prefix, e.g. "
                               "swebench/sweb.eval.arm64.")
    pull: PullOptions = Field(default_factory=PullOptions)


def repo_in_image(instance: Instance) -> bool:
    """Whether the instance's repository is the image's own /testbed: a row naming its image, or a row of a
    known family (its rule names the image). A row with a local `repo_path` keeps the copy (its repository
    wins), and so does a row that carries an install spec instead of an image (SWE-rebench's
    `install_config`: the environment image is built, agent.instances.envs, and the repository copied in)."""
    if instance.repo_path is not None:
        return False
    if instance.image is not None:
        return True
    return instance.dataset is not None and instance.install_config is None


def rule_image(instance_id: str, dataset: str, prefix: str | None = None) -> str:
    """The image a family's naming rule gives an instance id (see the module docstring)."""
    if dataset not in NAMING_RULES:
        known = ", ".join(sorted(NAMING_RULES))
        raise ImageError(f"{instance_id}: no image naming rule for dataset {dataset!r} (known: {known}); "
                         "give the row an `image`")
    default_prefix, rest = NAMING_RULES[dataset]
    return f"{prefix if prefix is not None else default_prefix}{rest(instance_id)}:latest".lower()


def official_image(instance: Instance, options: ImageOptions | None = None) -> str:
    """The prebuilt image of an instance whose repository is in its image (`repo_in_image`)."""
    options = options or ImageOptions()
    if instance.image:
        name = instance.image
    elif instance.dataset:
        name = rule_image(instance.instance_id, instance.dataset, options.prefix)
    else:
        raise ImageError(f"{instance.instance_id}: the row names no image and no dataset family; give it an "
                         "`image` (or `image_name` / `docker_image`)")
    return with_registry(name, options.registry)


def ensure_official_image(instance: Instance, options: ImageOptions | None = None,
                          on_progress: ProgressCallback | None = None) -> str:
    """The instance's official image, pulled first if this machine lacks it; raises images.registry.PullError."""
    options = options or ImageOptions()
    name = official_image(instance, options)
    ensure_image(name, options.pull, on_progress)
    return name
