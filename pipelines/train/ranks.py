"""What the ranks of a Ray Train job exchange: features for the contrastive queue, the mean of
logged values, and a check that the replicas hold the same weights. Each is a no-op on one rank,
so the loops and the tests call them without a process group."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _one_rank() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1


def gather_from_ranks(t: torch.Tensor) -> torch.Tensor:
    """All-gather before the queue (BLIP does): every rank's queue holds every rank's features."""
    if _one_rank():
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Every rank's values averaged, so that a logged loss speaks for the whole batch, not rank 0's
    share of it. A collective: every rank calls it at the same step."""
    if _one_rank():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def parameter_digest(module: torch.nn.Module) -> float:
    """A number that differs when any weight differs (sum of weights times a fixed pattern)."""
    total = torch.zeros((), dtype=torch.float64)
    for i, p in enumerate(module.parameters()):
        flat = p.detach().double().flatten().cpu()
        total += (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder(97)).sum() * (i + 1)
    return float(total)


def replicas_equal(module: torch.nn.Module) -> bool:
    """Whether every rank's copy of `module` has the same weights (DDP's promise, checked at the end)."""
    digest = torch.tensor([parameter_digest(module)], dtype=torch.float64)
    if _one_rank():
        return True
    backend_device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    parts = [torch.empty_like(digest, device=backend_device) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, digest.to(backend_device))
    return all(float(p) == float(parts[0]) for p in parts)
