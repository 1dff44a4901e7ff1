"""Gather-with-gradient helpers so N workers see one global contrastive batch.

open_clip's ``--local-loss --gather-with-grad`` design: every rank all-gathers the features of
every other rank *with* autograd, then scores only its own rows against the global columns. The
backward of the all-gather sums, over all ranks, the gradients that each rank's loss sends to a
slice of the gathered tensor (a reduce-scatter), so rank ``r``'s features receive
``d(sum_k L_k) / d x_r``. See ``docs/objective.md`` ("Distributed equivalence") for why DDP's
gradient averaging then reproduces the single-process gradient exactly.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# The replacement torch 2.14 recommends for the deprecated torch.distributed.nn.functional.all_gather;
# pyproject pins torch to 2.14.x, which has it, so there is no fallback to keep in step.
from torch.distributed._functional_collectives import all_gather_single, wait_tensor

from hivlp_milvus.errors import ConfigError

__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "check_equal_batch_sizes",
    "is_distributed",
    "rank_and_world_size",
]


def is_distributed(group: dist.ProcessGroup | None = None) -> bool:
    """Whether a process group with more than one rank is initialised.

    Args:
        group: Process group to ask about; the default (world) group when ``None``.

    Returns:
        ``True`` only if ``torch.distributed`` is available, initialised and has ≥ 2 ranks.
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world_size(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """This process's rank and the number of ranks, ``(0, 1)`` when not distributed.

    Args:
        group: Process group; the default (world) group when ``None``.

    Returns:
        ``(rank, world_size)``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def check_equal_batch_sizes(batch_size: int, *, device: torch.device, group: dist.ProcessGroup | None = None) -> None:
    """Raise on every rank unless all ranks hold the same number of rows.

    The rank offsets of the positive labels (``rank * B``) and the all-gather itself assume equal
    per-rank batches; a ragged last batch would silently mislabel rows (or hang the collective), so
    this check costs one tiny all-gather per step. Every rank sees every size, so every rank raises
    together and none is left waiting in a later collective.

    Args:
        batch_size: Rows on this rank.
        device: Device of the features (NCCL needs the size tensor on the GPU).
        group: Process group; the default (world) group when ``None``.

    Raises:
        ConfigError: The ranks hold different numbers of rows.
    """
    _, world = rank_and_world_size(group)
    mine = torch.tensor([batch_size], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    found = [int(s.item()) for s in sizes]
    if len(set(found)) != 1:
        raise ConfigError(
            f"the distributed HiVLP loss needs the same batch size on every rank, got {found}; "
            "drop the ragged last batch (DataLoader(drop_last=True), iter_torch_batches(drop_last=True))"
        )


def all_gather_with_grad(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather ``tensor`` along dim 0 from every rank, keeping the autograd graph.

    Args:
        tensor: ``(B, ...)`` local tensor; every rank must pass the same shape.
        group: Process group; the default (world) group when ``None``.

    Returns:
        ``(world_size * B, ...)``: rank ``k``'s rows at ``[k*B, (k+1)*B)``. Its backward sums the
        incoming gradients of all ranks into each rank's slice (reduce-scatter with SUM).
    """
    gathered = all_gather_single(tensor.contiguous(), 0, group if group is not None else dist.group.WORLD)
    # The result is an AsyncCollectiveTensor; wait_tensor (autograd-aware, unlike .elem) makes it
    # an ordinary tensor so callers never hold a pending collective.
    return wait_tensor(gathered)


def all_gather_no_grad(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """All-gather ``tensor`` along dim 0 without autograd (labels, group ids).

    Args:
        tensor: ``(B, ...)`` local tensor; every rank must pass the same shape.
        group: Process group; the default (world) group when ``None``.

    Returns:
        ``(world_size * B, ...)`` in rank order.
    """
    _, world = rank_and_world_size(group)
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor, group=group)
    return torch.cat(parts, dim=0)
