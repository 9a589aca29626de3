"""Tar filters shared by the backends' copy_in/copy_out.

Archives coming out of a sandbox are untrusted (the model controls their contents), so extraction on
the host skips members that would escape the destination; archives going in are made root-owned.
"""

from __future__ import annotations

import posixpath
import tarfile
from typing import Any

import structlog

log = structlog.get_logger()

# `safe_member` has filtered already; tell tarfile (3.12+ warns without a filter) not to again.
NO_FURTHER_FILTER: dict[str, Any] = {"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}


def root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """tarfile.add filter: files copied into a sandbox belong to its root."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def safe_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    """Extraction filter for archives from the sandbox (untrusted): skip what would escape `dest`."""
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:  # Python without extraction filters: refuse anything suspicious
        name = posixpath.normpath(member.name)
        if name.startswith(("/", "..")) or member.isdev() or member.islnk() or member.issym():
            log.warning("sandbox.copy_out_skipped", member=member.name)
            return None
        return member
    try:
        return data_filter(member, dest)
    except tarfile.FilterError as exc:
        log.warning("sandbox.copy_out_skipped", member=member.name, reason=str(exc))
        return None


def extract_untrusted(tar: tarfile.TarFile, host_dir: str) -> None:
    """Extract a stream of members from a sandbox into `host_dir`, skipping any that would escape it."""
    for member in tar:
        safe = safe_member(member, host_dir)
        if safe is not None:
            tar.extract(safe, host_dir, **NO_FURTHER_FILTER)
