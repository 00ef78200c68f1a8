"""Decomposed relative position embeddings (MViTv2 §3.1, Eq. 4): the one place they are computed.

The attention logit between query ``i`` and key ``j`` gets ``q_i · (R_t[t(i)-t(j)] +
R_h[h(i)-h(j)] + R_w[w(i)-w(j)])``, one table per axis of the grid (1 to 3 axes). The bias is
never needed as a whole: it is the sum of per-axis *terms* ``q · R_a`` of shape
(..., Lq, k_len_a), each broadcast over the other key axes. :class:`RelPos` computes the
terms and places them on the key grid in the forms the attention implementations consume
(added to the logits, a bias, or one-hot key codes whose dot product with the terms is the
bias), and gives the adjoints of the terms and of their placement for hand-written backwards.

A table has length ``2 * max(q_len, k_len) - 1`` for the grid it was built for; at run time it
is linearly interpolated to the lengths it meets, so a model built for 224² runs at 1024² or
800×1333, and a video model at any clip length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

EINSUM_AXES = "thw"  # einsum letters for up to three grid axes


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly interpolate a table (L, C) to (length, C); identity when L == length."""
    if rel_pos.shape[0] == length:
        return rel_pos
    resized = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear")
    return resized.squeeze(0).t()


def rel_pos_lookup(q_len: int, k_len: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Embeddings for every (query, key) offset along one axis: (q_len, k_len, C).

    When the lengths differ (pooled keys), coordinates of the shorter side are scaled up so both
    live on the finer grid, as in the MViTv2 paper.
    """
    table = resize_rel_pos(rel_pos, 2 * max(q_len, k_len) - 1)
    q_scale = max(k_len / q_len, 1.0)
    k_scale = max(q_len / k_len, 1.0)
    q_coords = torch.arange(q_len, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_len, device=rel_pos.device)[None, :] * k_scale
    offsets = (q_coords - k_coords) + (k_len - 1) * k_scale
    return table[offsets.long()]


def _grid_rows(x: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """The rows (dim 2) of x after its ``num_prefix`` prefix rows: the grid tokens' (a view;
    split, not a slice, so that its backward is one cat)."""
    return x.split([num_prefix, x.shape[2] - num_prefix], dim=2)[1] if num_prefix else x


@dataclass
class RelPos:
    """The decomposed bias of one attention call: per grid axis, the lookup (q_len, k_len, C)
    of :func:`rel_pos_lookup` (or a slice of a larger one, for windows cut at the border).

    The bias is never needed as a whole: :meth:`terms` gives per axis ``q · R_a`` of shape
    (B, heads, p + Lq, k_shape[a]) with zero rows for the p prefix (class) tokens, and the
    bias of query i and key j is ``sum_a terms[a][i, coord_a(j)]`` over the grid keys (zero for
    prefix keys). The other methods place the terms on the key grid in the forms the attention
    implementations consume.
    """

    lookups: list[torch.Tensor]
    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    num_prefix: int = 0

    def terms(self, q: torch.Tensor, lookups: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per axis, ``q · R_a`` for unscaled queries q (B, heads, p + prod(q_shape), C);
        ``lookups`` replaces :attr:`lookups` (to differentiate with respect to them)."""
        p = self.num_prefix
        b, heads, _, c = q.shape
        axes = EINSUM_AXES[-len(self.q_shape):]
        q_grid = _grid_rows(q, p).reshape(b, heads, *self.q_shape, c)
        terms = []
        for a, r in enumerate(self.lookups if lookups is None else lookups):
            term = torch.einsum(f"bn{axes}c,{axes[a]}kc->bn{axes}k", q_grid, r.to(q.dtype))
            term = term.reshape(b, heads, -1, r.shape[1])
            terms.append(F.pad(term, (0, 0, p, 0)) if p else term)
        return terms

    def terms_backward(
        self, q: torch.Tensor, grad_terms: Sequence[torch.Tensor], grad_q: torch.Tensor,
        need_lookups: Sequence[bool],
    ) -> list[torch.Tensor | None]:
        """Adjoint of :meth:`terms`: adds the gradient of q into ``grad_q`` (same shape as q,
        in place) and returns the gradient of each lookup (None where not ``need_lookups``)."""
        p = self.num_prefix
        b, heads, _, c = q.shape
        axes = EINSUM_AXES[-len(self.q_shape):]
        q_grid = _grid_rows(q, p).reshape(b, heads, *self.q_shape, c)
        grad_q_grid = _grid_rows(grad_q, p).view(b, heads, *self.q_shape, c)
        grad_lookups = []
        for a, (r, g) in enumerate(zip(self.lookups, grad_terms)):
            g = _grid_rows(g, p).reshape(b, heads, *self.q_shape, r.shape[1])
            grad_q_grid += torch.einsum(f"bn{axes}k,{axes[a]}kc->bn{axes}c", g, r.to(q.dtype))
            grad_lookups.append(torch.einsum(f"bn{axes}k,bn{axes}c->{axes[a]}kc", g, q_grid)
                                if need_lookups[a] else None)
        return grad_lookups

    def on_key_axis(self, term: torch.Tensor, axis: int) -> torch.Tensor:
        """A term of ``axis`` (..., rows, k_shape[axis]) viewed on the key grid:
        (..., rows, 1, ..., k_shape[axis], ..., 1)."""
        view = [1] * len(self.k_shape)
        view[axis] = self.k_shape[axis]
        return term.reshape(*term.shape[:-1], *view)

    def add_to_(self, logits: torch.Tensor, terms: Sequence[torch.Tensor]) -> torch.Tensor:
        """Add the bias to logits (B, heads, p + Lq, p + Lk) in place, as one matmul of the
        terms with the :meth:`key_codes` (no Lq x Lk bias is built, and the logits are read and
        written once, not once per axis); the leading dims of logits must flatten to one
        (a view). Returns logits."""
        codes = torch.cat(self.key_codes(logits), dim=1)
        rows = logits.view(-1, logits.shape[-1])
        rows.addmm_(torch.cat(list(terms), dim=-1).reshape(rows.shape[0], -1), codes.t())
        return logits

    def bias(self, terms: Sequence[torch.Tensor]) -> torch.Tensor:
        """The bias (B, heads, rows, p + Lk) from terms (B, heads, rows, k_shape[a]): the terms
        summed on the key grid, zero for the prefix keys."""
        placed = [self.on_key_axis(term, a) for a, term in enumerate(terms)]
        partial = placed[0]  # the sum over all axes but the last: a fraction of the bias
        for term in placed[1:-1]:
            partial = partial + term
        p = self.num_prefix
        if p and not torch.is_grad_enabled():
            # the last sum written after the prefix columns: one bias-sized write, where the
            # sum and then a pad write it twice
            bias = partial.new_empty(*partial.shape[:3], p + math.prod(self.k_shape))
            bias[..., :p] = 0
            grid = bias[..., p:].unflatten(-1, self.k_shape)
            if len(placed) > 1:
                torch.add(partial, placed[-1], out=grid)
            else:
                grid.copy_(partial)
            return bias
        bias = (partial + placed[-1] if len(placed) > 1 else partial).flatten(3)
        return F.pad(bias, (p, 0)) if p else bias

    def key_codes(self, like: torch.Tensor) -> list[torch.Tensor]:
        """Per axis a, the one-hot coordinate of every key along a: (p + Lk, k_shape[a]), zero
        rows for prefix keys, so that ``terms[a] @ key_codes[a]ᵀ`` is axis a's bias."""
        ndim = len(self.k_shape)
        codes = []
        for a, size in enumerate(self.k_shape):
            view = [1] * ndim
            view[a] = size
            eye = torch.eye(size, dtype=like.dtype, device=like.device).reshape(*view, size)
            code = eye.expand(*self.k_shape, size).reshape(-1, size)
            codes.append(F.pad(code, (0, 0, self.num_prefix, 0)) if self.num_prefix else code)
        return codes

    def grads_from_logits(self, grad_logits: torch.Tensor) -> list[torch.Tensor]:
        """Adjoint of :meth:`add_to_`: the gradient of each term from the logits' gradient
        (B, heads, p + Lq, p + Lk), i.e. the sum over the other key axes, as one matmul with
        the key codes (the gradient is read once)."""
        codes = self.key_codes(grad_logits)
        rows = grad_logits.reshape(-1, grad_logits.shape[-1])
        grads = (rows @ torch.cat(codes, dim=1)).split([c.shape[1] for c in codes], dim=1)
        return [g.reshape(*grad_logits.shape[:-1], g.shape[1]) for g in grads]
