"""Packed seeds: K runs of one cell (same everything but the seed) trained as one fused model.

HFTA-style horizontal fusion by wrapping: the K members are built as separate runs would build
them (each with its own seed), then their layers are fused into one network whose every
parameter and buffer is the K members' tensors concatenated along dim 0:

    Conv2d(C_in, C_out, groups=g)  ->  same class, (K*C_in, K*C_out, groups=K*g)
                                       (weight- and scaled-weight-standardized convs standardize
                                       per output channel, and NF gains are per output channel,
                                       so member k's channels see exactly member k's weights)
    BatchNorm2d(C)                 ->  BatchNorm2d(K*C): statistics are per channel
    GroupNorm(G, C)                ->  GroupNorm(K*G, K*C): groups never straddle two members
                                       (LN = GN(1) -> GN(K), IN = GN(C) -> GN(K*C))
    Linear(in, out)                ->  PackedLinear: K independent heads, one batched matmul
    Dropout(p)                     ->  MemberDropout: member k's mask from member k's generator
    ReLU, pools, Flatten, Identity ->  unchanged (elementwise or per channel)

Member k's batch occupies channels [k*C, (k+1)*C) of the input, [B, K*C, H, W]; the output is
[B, K, classes]. Nothing mixes members, so with the summed loss each member's gradient is its
own run's gradient, and SGD (momentum, weight decay: elementwise) over the stacked parameters is
K separate SGDs. 0-dim buffers (BatchNorm's num_batches_tracked) are the same for every member
and are kept once.

    pack = PackedModel([m0, m1, m2], generators=[g0, g1, g2])   # g: dropout RNG of each member
    logits = pack(torch.cat([x0, x1, x2], 1))                 # [B, 3, classes]
    states = pack.member_states()                             # 3 ordinary state_dicts

A model holding a layer not listed above cannot be packed (PackError names it); with K = 1 any
model "packs" (the unknown layer is kept as it is), so a single run is a pack of one.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# Layers without parameters that act elementwise or per channel: safe to share across members.
PASS_THROUGH = (
    nn.ReLU,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
)


class PackError(ValueError):
    """These models cannot be fused; the message names the layer and why."""


class PackedLinear(nn.Linear):
    """K independent linear layers: input [N, K*in] -> output [N, K*out].

    weight [K*out, in] and bias [K*out] are the members' weights and biases stacked, so the
    parameters keep the roles (and ndim) of nn.Linear's (weight decay and AGC treat them alike).
    """

    def __init__(self, members: int, weight: torch.Tensor, bias: torch.Tensor | None):
        nn.Module.__init__(self)
        self.members = members
        self.in_features = weight.shape[1] * members
        self.out_features = weight.shape[0]
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.members == 1:
            return F.linear(x, self.weight, self.bias)
        k, n = self.members, x.shape[0]
        xs = x.reshape(n, k, -1).transpose(0, 1)  # [K, N, in]
        w = self.weight.view(k, -1, self.weight.shape[1]).transpose(1, 2)  # [K, in, out]
        if self.bias is None:
            out = torch.bmm(xs, w)
        else:
            out = torch.baddbmm(self.bias.view(k, 1, -1), xs, w)  # [K, N, out]
        return out.transpose(0, 1).reshape(n, -1)

    def extra_repr(self) -> str:
        return f"members={self.members}, {super().extra_repr()}"


class MemberDropout(nn.Module):
    """Dropout whose mask for member k comes from member k's own generator.

    As at::dropout on the CPU: mask = bernoulli(1 - p) / (1 - p), drawn for member k's
    [N, C, H, W] slice in that order, so a member draws exactly what its separate run does.
    """

    def __init__(self, p: float, generators: Sequence[torch.Generator]):
        super().__init__()
        self.p = p
        self.generators = list(generators)  # not state: checkpointed by the trainer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        parts = []
        for xk, gen in zip(x.chunk(len(self.generators), 1), self.generators, strict=True):
            noise = torch.empty(xk.shape, dtype=xk.dtype, device=xk.device)
            noise.bernoulli_(1 - self.p, generator=gen).div_(1 - self.p)
            parts.append(xk * noise)
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def extra_repr(self) -> str:
        return f"p={self.p}, members={len(self.generators)}"


def _stack(tensors: list[torch.Tensor], where: str) -> torch.Tensor:
    if tensors[0].ndim == 0:  # shared counter (num_batches_tracked): must agree
        if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
            raise PackError(f"{where}: the members' values differ ({[t.item() for t in tensors]})")
        return tensors[0].clone()
    return torch.cat([t.detach() for t in tensors], 0)


def _fuse_tensors(fused: nn.Module, layers: list[nn.Module], where: str) -> None:
    """Give `fused` (a copy of layers[0]) the members' parameters and buffers stacked."""
    for name, p in layers[0].named_parameters(recurse=False):
        stacked = _stack([getattr(m, name) for m in layers], f"{where}.{name}")
        setattr(fused, name, nn.Parameter(stacked, requires_grad=p.requires_grad))
    for name, b in layers[0].named_buffers(recurse=False):
        if b is not None:
            fused._buffers[name] = _stack([m._buffers[name] for m in layers], f"{where}.{name}")


def _fuse_layer(layers: list[nn.Module], where: str, generators) -> nn.Module:
    k, first = len(layers), layers[0]
    if isinstance(first, nn.Linear):
        weight = _stack([m.weight for m in layers], f"{where}.weight")
        bias = None if first.bias is None else _stack([m.bias for m in layers], f"{where}.bias")
        return PackedLinear(k, weight, bias)
    if isinstance(first, nn.Dropout):
        return MemberDropout(first.p, generators)
    if isinstance(first, PASS_THROUGH):
        return first
    fused = copy.deepcopy(first)
    if isinstance(first, nn.Conv2d):
        fused.in_channels, fused.out_channels = k * first.in_channels, k * first.out_channels
        fused.groups = k * first.groups
    elif isinstance(first, nn.modules.batchnorm._BatchNorm):
        fused.num_features = k * first.num_features
    elif isinstance(first, nn.GroupNorm):
        fused.num_groups, fused.num_channels = k * first.num_groups, k * first.num_channels
    elif k == 1:
        return first  # a pack of one needs no fusion
    else:
        raise PackError(
            f"layer {where or '(model)'} ({type(first).__name__}) cannot be packed; packable: "
            "Conv2d and its weight-standardized kinds, BatchNorm2d, GroupNorm, Linear, Dropout, "
            + ", ".join(t.__name__ for t in PASS_THROUGH)
        )
    _fuse_tensors(fused, layers, where)
    return fused


def _fuse(layers: list[nn.Module], where: str, generators) -> nn.Module:
    first = layers[0]
    children = list(first._modules.items())  # with None entries (an absent shortcut)
    if not children:
        return _fuse_layer(layers, where, generators)
    own = [n for n, _ in first.named_parameters(recurse=False)]
    own += [n for n, b in first.named_buffers(recurse=False) if b is not None]
    if own and len(layers) > 1:
        raise PackError(f"module {where or '(model)'} has its own tensors {own}: cannot be packed")
    fused = copy.copy(first)  # the container's attributes (alpha, beta, ...) and forward
    fused._modules = {}
    for name, child in children:
        sub = [m._modules[name] for m in layers]
        path = f"{where}.{name}" if where else name
        fused._modules[name] = None if child is None else _fuse(sub, path, generators)
    return fused


def check_same_structure(models: Sequence[nn.Module]) -> None:
    """PackError unless every member has the same layers with the same tensor shapes."""
    ref = {k: tuple(v.shape) for k, v in models[0].state_dict().items()}
    ref_types = [type(m) for m in models[0].modules()]
    for i, m in enumerate(models[1:], 1):
        shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        if shapes != ref or [type(x) for x in m.modules()] != ref_types:
            raise PackError(f"member {i} is not the same architecture as member 0")


class PackedModel(nn.Module):
    """K member models fused into one (see the module docstring). forward: [N, K*C, H, W] ->
    logits [N, K, classes]."""

    def __init__(self, models: Sequence[nn.Module], generators: Sequence[torch.Generator]):
        super().__init__()
        if not models or len(models) != len(generators):
            raise PackError(
                f"{len(models)} models and {len(generators)} generators: need K of each"
            )
        check_same_structure(models)
        self.members = len(models)
        self.generators = list(generators)
        self.net = _fuse(list(models), "", self.generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)  # [N, K * classes]
        return out.view(out.shape[0], self.members, -1)

    def member_states(self) -> list[dict[str, torch.Tensor]]:
        """K state_dicts with the member models' own keys and shapes (copies, not views)."""
        return unstack_state(self.net.state_dict(), self.members)

    @torch.no_grad()
    def freeze_member_(self, k: int, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero member k's slice of every parameter, buffer and momentum buffer: it then outputs
        finite zeros and, with its loss left out, receives zero gradients and stays put."""
        for t in [*self.net.parameters(), *self.net.buffers()]:
            if t.ndim > 0 and t.is_floating_point():
                t.chunk(self.members, 0)[k].zero_()
        for state in optimizer.state.values() if optimizer else []:
            buf = state.get("momentum_buffer")
            if buf is not None:
                buf.chunk(self.members, 0)[k].zero_()


def member_slice(t: torch.Tensor, k: int, members: int) -> torch.Tensor:
    """Member k's part of a packed tensor (a copy); 0-dim tensors are shared."""
    return t.clone() if t.ndim == 0 else t.chunk(members, 0)[k].clone()


def unstack_state(state: dict, members: int) -> list[dict[str, torch.Tensor]]:
    return [{n: member_slice(t, k, members) for n, t in state.items()} for k in range(members)]


def pack_optimizer_states(states: list[dict]) -> dict:
    """One optimizer state_dict for the packed parameters from the members' (same param order:
    make_optimizer walks the packed net exactly as a member model)."""
    first = states[0]
    packed = {"param_groups": copy.deepcopy(first["param_groups"]), "state": {}}
    for idx, entry in first["state"].items():
        packed["state"][idx] = {
            key: value if not isinstance(value, torch.Tensor)
            else _stack([s["state"][idx][key] for s in states], f"optimizer state {idx}.{key}")
            for key, value in entry.items()
        }  # fmt: skip
    return packed


def unpack_optimizer_state(state: dict, members: int) -> list[dict]:
    """The members' optimizer state_dicts, as each member's own optimizer would hold them."""
    out = []
    for k in range(members):
        per = {
            idx: {
                key: member_slice(v, k, members) if isinstance(v, torch.Tensor) else v
                for key, v in entry.items()
            }
            for idx, entry in state["state"].items()
        }
        out.append({"state": per, "param_groups": copy.deepcopy(state["param_groups"])})
    return out


__all__ = [
    "MemberDropout",
    "PackError",
    "PackedLinear",
    "PackedModel",
    "member_slice",
    "pack_optimizer_states",
    "unpack_optimizer_state",
    "unstack_state",
]
