"""The AmlCompute cluster a job runs on: built from `target.compute`, fetched or created.

An existing cluster is reused only when it has the configured size and tier: a job meant for an
A100 must not land on whatever a same-named cluster happens to be, nor a job meant for dedicated
nodes on preemptible low-priority ones (or the reverse, at the dedicated price).
"""

from __future__ import annotations

import logging
import re

from azure.ai.ml.entities import AmlCompute, IdentityConfiguration, ManagedIdentityConfiguration

log = logging.getLogger(__name__)

# Docker's --shm-size spelling, which azure-ai-ml passes on: a number and a unit (bytes, KiB, MiB, GiB).
SHM_SIZE = re.compile(r"(\d+)([bkmg])")
UNIT_GIB = {"b": 1 / 2**30, "k": 1 / 2**20, "m": 1 / 2**10, "g": 1}
AZURE_DEFAULT_SHM_GIB = 2


class ComputeError(ValueError):
    """The compute config or the workspace's cluster does not fit this job."""


def _identity(identity: str | None) -> IdentityConfiguration | None:
    if not identity:
        return None
    if identity == "system_assigned":
        return IdentityConfiguration(type="system_assigned")
    if identity.startswith("/subscriptions/"):
        return IdentityConfiguration(
            type="user_assigned",
            user_assigned_identities=[ManagedIdentityConfiguration(resource_id=identity)],
        )
    raise ComputeError(
        f"target.compute.identity={identity!r}: use null, system_assigned or a user-assigned identity's "
        "resource id (/subscriptions/.../providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME)"
    )


def compute_entity(compute_cfg) -> AmlCompute:
    if not 0 <= compute_cfg.min_instances <= compute_cfg.max_instances:
        raise ComputeError(
            f"target.compute: need 0 <= min_instances ({compute_cfg.min_instances}) <= "
            f"max_instances ({compute_cfg.max_instances})"
        )
    return AmlCompute(
        name=compute_cfg.name,
        size=compute_cfg.size,
        min_instances=compute_cfg.min_instances,
        max_instances=compute_cfg.max_instances,
        idle_time_before_scale_down=compute_cfg.idle_time_before_scale_down,
        tier=compute_cfg.tier,
        location=compute_cfg.location,
        identity=_identity(compute_cfg.identity),
        description="finetune-phi training cluster (python -m train target=azureml)",
    )


def check_fits(cfg) -> None:
    """The job's shape against the configured cluster, before anything is created."""
    target, compute = cfg.target, cfg.target.compute
    if target.instance_count > compute.max_instances:
        raise ComputeError(
            f"target.instance_count={target.instance_count} exceeds target.compute.max_instances="
            f"{compute.max_instances} of {compute.name}: raise max_instances or lower instance_count"
        )
    if compute.gpus_per_node and target.process_count_per_instance > compute.gpus_per_node:
        raise ComputeError(
            f"target.process_count_per_instance={target.process_count_per_instance} but {compute.size} has "
            f"{compute.gpus_per_node} GPU(s) per node: one process per GPU"
        )
    needs_gpu = [
        key
        for key, on in (
            ("sft.bf16", cfg.sft.get("bf16")),
            ("sft.fp16", cfg.sft.get("fp16")),
            ("peft.load_in_4bit", cfg.peft.load_in_4bit),
        )
        if on
    ]
    shm_size(compute)  # a bad or missing size stops here, in a dry run too
    if not compute.gpus_per_node and needs_gpu:
        raise ComputeError(
            f"{compute.size} ({compute.name}) has no GPU but this config needs one ({', '.join(needs_gpu)}): "
            "use target/compute=nc24ads_a100_v4, or a CPU config such as +profile=cpu"
        )


def shm_size(compute_cfg) -> str:
    """The job container's /dev/shm: `target.compute.shm_size`, or half the node's memory. Checked
    here, before anything is created: a size Docker cannot read, one over the node's memory, or
    none at all (Azure's 2g, which DataLoader workers and NCCL exhaust on multi-GPU nodes)."""
    memory = compute_cfg.get("memory_gib")
    if compute_cfg.get("shm_size") is None:
        if not memory:
            raise ComputeError(
                f"target.compute.memory_gib is not set for {compute_cfg.size}: set it to the size's RAM in GiB "
                "(the job's /dev/shm is sized from it), or set target.compute.shm_size (e.g. 32g)"
            )
        return f"{int(memory // 2)}g"
    size = str(compute_cfg.shm_size).strip().lower()
    match = SHM_SIZE.fullmatch(size)
    if not match or int(match[1]) == 0:
        raise ComputeError(
            f"target.compute.shm_size={compute_cfg.shm_size!r}: give a number and a unit, b, k, m or g (e.g. 32g)"
        )
    gib = int(match[1]) * UNIT_GIB[match[2]]
    if memory and gib > memory:
        raise ComputeError(
            f"target.compute.shm_size={size} is more than the node's memory ({memory:g} GiB, "
            "target.compute.memory_gib); null sizes it at half of that"
        )
    if gib < AZURE_DEFAULT_SHM_GIB:
        log.warning("target.compute.shm_size=%s is below Azure's default of 2g", size)
    return size


def ensure_compute(ml_client, compute_cfg) -> AmlCompute:
    """The workspace's cluster `compute_cfg.name`: reused when it has the configured size,
    created (and waited for) when missing, an error otherwise."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        existing = ml_client.compute.get(compute_cfg.name)
    except ResourceNotFoundError:
        existing = None
    if existing is not None:
        # ARM reports sizes upper-cased (STANDARD_NC24ADS_A100_V4); azure-ai-ml reports the tier
        # as the config spells it (vmPriority LowPriority -> low_priority).
        size, tier = getattr(existing, "size", None), getattr(existing, "tier", None)
        if size is None or size.lower() != compute_cfg.size.lower():
            raise ComputeError(
                f"compute {compute_cfg.name!r} in the workspace is {getattr(existing, 'type', '?')} of size "
                f"{size}, not {compute_cfg.size}: set target.compute.name to a new cluster name, or "
                f"target.compute.size={size} to use it"
            )
        if str(tier).lower() != str(compute_cfg.tier).lower():
            raise ComputeError(
                f"compute {compute_cfg.name!r} in the workspace has tier {tier}, not {compute_cfg.tier}: set "
                f"target.compute.name to a new cluster name, or target.compute.tier={tier} to use it"
            )
        log.info("compute %s (%s, %s) exists; reusing it", compute_cfg.name, size, tier)
        return existing
    log.info("creating compute %s (%s, %s)", compute_cfg.name, compute_cfg.size, compute_cfg.tier)
    return ml_client.compute.begin_create_or_update(compute_entity(compute_cfg)).result()
