"""Data parallelism for the trainer: DDP, or FSDP2 (`fully_shard` per DiT block) with mixed precision.

FSDP keeps each parameter, its gradient, its AdamW moments and its EMA as a DTensor shard. Checkpoints
stay ordinary full checkpoints: the model and EMA are gathered to rank 0 and written as safetensors,
the optimizer state is gathered keyed by parameter name — the same files a single process writes, so
a run can resume under any strategy with the same rank count. Loading reads on rank 0 and
broadcasts / scatters to the shards, so only rank 0 touches the files.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from acemodel.dit import ACEDiT


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_fsdp(model: ACEDiT, param_dtype: torch.dtype | None = None) -> ACEDiT:
    """FSDP2 in place: one all-gather group per DiT block, the embedders and final layer at the root.

    `param_dtype` (bf16) is the compute copy FSDP all-gathers; master weights, gradients after the
    reduce-scatter (fp32) and optimizer state stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


# --- checkpoint state ------------------------------------------------------------------------


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict on CPU on rank 0 ({} elsewhere under FSDP); every rank must call it."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def full_tensors(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """Gather DTensor shards (collective: every rank calls); `keep` = this rank wants the result."""
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in tensors.items():
        full = v.full_tensor() if isinstance(v, DTensor) else v
        if keep:
            out[k] = full.detach().cpu().contiguous()
    return out


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """AdamW state keyed by parameter name, gathered (rank 0 gets it under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sharded = is_sharded(model)
    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=sharded))


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """`state` is the full dict on rank 0 (may be {} on other ranks when distributed)."""
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        model.load_state_dict(state)


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # a fresh optimizer has no state to load into: the API initialises it with a zero-lr step, which
    # it skips when gradients exist, so none may be left over
    opt.zero_grad(set_to_none=True)
    set_optimizer_state_dict(model, opt, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=is_distributed()))


def shard_like(full: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A full tensor (present on rank 0) laid out like `like`: scattered into its DTensor shards,
    or broadcast to every rank for a replicated (DDP) parameter."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(like, DTensor):
        src = full if full is not None else torch.empty(like.shape, dtype=torch.float32)
        return distribute_tensor(src.to(like.device, torch.float32), like.device_mesh, like.placements)
    if is_distributed():
        buf = full.to(like.device, torch.float32) if full is not None else \
            torch.empty(like.shape, dtype=torch.float32, device=like.device)
        dist.broadcast(buf, src=0)
        return buf
    return full.to(like.device, torch.float32)


def gather_objects(obj) -> list:
    """One picklable object per rank, on every rank."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
