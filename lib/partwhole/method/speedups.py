"""Profile switches that change how, not what, is computed, each tested against the reference on tiny random models
(tests/test_speedups.py states the tolerance of each):

* `sam_attention="sdpa"`: SAM's image-encoder attention through `torch.nn.functional.scaled_dot_product_attention`
  (fused kernels) instead of segment_anything's explicit softmax of the full attention matrix; its decomposed
  relative positions become the additive mask, as in segment-anything-fast.
* `checkpoint_iterations`: each Agglomerator iteration recomputed in the backward pass instead of keeping its
  activations (less peak memory, one more forward per step).
* `foreach_optimizer`: lion_pytorch's Lion update on all parameters of a group at once (torch's foreach kernels),
  the same arithmetic in the same order as its per-parameter loop.
"""
import types

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch.utils.checkpoint import checkpoint

SAM_ATTENTION = ("reference", "sdpa")


def _sdpa_attention(self: Attention, x: torch.Tensor) -> torch.Tensor:
    """segment_anything's `Attention.forward` ((B, H, W, C) -> (B, H, W, C)) with the attention fused."""
    B, H, W, _ = x.shape
    q, k, v = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, HW, c)
    bias = None
    if self.use_rel_pos:  # add_decomposed_rel_pos's two terms, on the unscaled queries as there
        queries = q.reshape(B, self.num_heads, H, W, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", queries, get_rel_pos(H, H, self.rel_pos_h))
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", queries, get_rel_pos(W, W, self.rel_pos_w))
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, self.num_heads, H * W, H * W).to(q.dtype)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    return self.proj(x.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1))


def set_sam_attention(sam: torch.nn.Module, kind: str) -> torch.nn.Module:
    """Every attention block of SAM's image encoder computed as `kind` says (in place; "reference" undoes "sdpa")."""
    if kind not in SAM_ATTENTION:
        raise ValueError(f"sam_attention={kind!r}: choose one of {SAM_ATTENTION}")
    for module in sam.image_encoder.modules():
        if isinstance(module, Attention):
            if kind == "sdpa":
                module.forward = types.MethodType(_sdpa_attention, module)
            else:
                module.__dict__.pop("forward", None)
    return sam


def _checkpointed_step(self, tokens, levels):
    return checkpoint(type(self).step, self, tokens, levels, use_reentrant=False)


def checkpoint_iterations(agglomerator: torch.nn.Module) -> torch.nn.Module:
    """Each of the Agglomerator's iterations (`step`) recomputed in the backward pass, in place. A bound method, so
    that copies of the model (`copy.deepcopy`) checkpoint their own steps."""
    agglomerator.step = types.MethodType(_checkpointed_step, agglomerator)
    return agglomerator


class ForeachLion(torch.optim.Optimizer):
    """lion_pytorch's `Lion` (coupled weight decay), each group's parameters updated together by foreach kernels:
    fewer, larger GPU kernel launches than its loop over parameters, the same operations in the same order."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        if lr <= 0 or not all(0 <= beta <= 1 for beta in betas):
            raise ValueError(f"Lion needs lr > 0 and betas in [0, 1], got lr={lr}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            exp_avgs = [self.state[p].setdefault("exp_avg", torch.zeros_like(p)) for p in params]
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            torch._foreach_mul_(params, 1.0 - lr * wd)
            update = torch._foreach_mul(exp_avgs, beta1)
            torch._foreach_add_(update, grads, alpha=1.0 - beta1)
            torch._foreach_sign_(update)
            torch._foreach_add_(params, update, alpha=-lr)
            torch._foreach_mul_(exp_avgs, beta2)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta2)
        return loss
