"""Optimizer, learning-rate schedules and adaptive gradient clipping (config key `optim`).

The schedule is a pure function of (epoch, step): nothing to checkpoint beyond the epoch, and
a resumed run sets exactly the lr an uninterrupted one would.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from normrepro import norms

# step: lr *= factor at each epoch of `milestones` (seed 000: factor 0.2 at 60/90/120/200);
# evenly: lr *= factor at `n_drops` evenly spaced epochs (seed 001: factor 0.1);
# cosine: from lr to 0 over the epochs after warmup; constant: lr throughout.
# (run_config.SCHEDULES lists them for validation.)


# torch's own norm layers, for a model built without norms.make_norm (whose layers say their
# norm, and the norm's registry row says whether it is exempt).
TORCH_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def is_exempt_norm_layer(module: nn.Module) -> bool:
    """Whether every parameter of `module` is a norm gain or shift that `wd_on_norm: false`
    exempts: a layer of a norm whose registry row has wd_exempt (norm_registry.NORMS), or one of
    torch's norm layers built outside the registry."""
    spec = norms.spec_of(module)
    return spec.wd_exempt if spec is not None else isinstance(module, TORCH_NORMS)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that `wd_on_norm: false` exempts from weight decay, by role:
    every parameter of an exempt norm layer (is_exempt_norm_layer), every bias, and the
    parameters a module lists in its `no_weight_decay` attribute (the per-channel gain of a
    scaled-WS conv: a 4-D tensor [out, 1, 1, 1], which a test on ndim would miss)."""
    names = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        exempt_layer = is_exempt_norm_layer(module)
        for p_name, _ in module.named_parameters(recurse=False):
            if exempt_layer or p_name == "bias" or p_name in getattr(module, "no_weight_decay", ()):
                names.add(prefix + p_name)
    return names


def make_optimizer(model: nn.Module, lr: float, optim_cfg: dict) -> torch.optim.SGD:
    """SGD with momentum; norm gains/shifts, biases and scaled-WS gains get no weight decay
    unless wd_on_norm (see `no_decay_names`)."""
    exempt = set() if optim_cfg["wd_on_norm"] else no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim_cfg["weight_decay"]}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(
        groups, lr=lr, momentum=optim_cfg["momentum"], nesterov=optim_cfg["nesterov"]
    )


def drop_epochs(optim_cfg: dict, epochs: int) -> list[int]:
    """Epochs (0-based) from which the next lr drop applies, for "step" and "evenly"."""
    if optim_cfg["schedule"] == "step":
        return sorted(optim_cfg["milestones"])
    if optim_cfg["schedule"] == "evenly":
        n = optim_cfg["n_drops"]
        # 100 epochs, 3 drops: 25, 50, 75; never at epoch 0 (a short smoke run: 2 epochs -> 1)
        return [max(1, epochs * k // (n + 1)) for k in range(1, n + 1)]
    return []


def lr_at(optim_cfg: dict, base_lr: float, epochs: int, epoch: int, step: int, steps: int) -> float:
    """The lr for `step` (0-based, of `steps` per epoch) of `epoch` (0-based).

    Warmup is linear and per step, from base_lr/warmup_steps to base_lr over `warmup_epochs`;
    after it the schedule is per epoch: step/evenly multiply by `factor` for each drop epoch
    reached; cosine anneals from base_lr at the end of warmup towards 0 at `epochs`.
    """
    warmup = optim_cfg["warmup_epochs"]
    if epoch < warmup:
        return base_lr * (epoch * steps + step + 1) / (warmup * steps)
    schedule = optim_cfg["schedule"]
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))
    return base_lr * optim_cfg["factor"] ** sum(epoch >= d for d in drop_epochs(optim_cfg, epochs))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clipped_params(model: nn.Module) -> list[nn.Parameter]:
    """The params adaptive gradient clipping acts on: all but those of the last nn.Linear (the
    classifier, which NFNets leave unclipped)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = {id(p) for p in linears[-1].parameters()} if linears else set()
    return [p for p in model.parameters() if p.requires_grad and id(p) not in head]


def _unitwise_norm(x: torch.Tensor, members: int = 1) -> torch.Tensor:
    # One norm per output unit (dim 0 of a conv/linear weight, shape [out, 1, ...]);
    # a vector (gain, bias) is one unit, as in the NFNets reference code. In a pack of
    # `members` runs a vector is the members' vectors stacked: one unit per member.
    if x.ndim > 1:
        return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)
    if x.ndim == 0:
        return torch.linalg.vector_norm(x)
    per_member = torch.linalg.vector_norm(x.reshape(members, -1), dim=1, keepdim=True)
    return per_member.expand(members, x.numel() // members).reshape(x.shape)


@torch.no_grad()
def adaptive_clip_grad_(
    params: list[nn.Parameter], clip: float, eps: float = 1e-3, members: int = 1
) -> None:
    """NFNets AGC: where ||G||/max(||W||, eps) > clip, G <- clip * max(||W||, eps) / ||G|| * G.

    members: the params are `members` runs' tensors stacked on dim 0 (src/packing.py); each
    run's units are clipped as its own run would clip them."""
    for p in params:
        if p.grad is None:
            continue
        max_norm = _unitwise_norm(p.detach(), members).clamp_min(eps) * clip
        grad_norm = _unitwise_norm(p.grad, members)
        # Units under the threshold get scale 1; clamp_min avoids 0/0 for an all-zero gradient.
        p.grad.mul_((max_norm / grad_norm.clamp_min(1e-6)).clamp_max(1.0))
