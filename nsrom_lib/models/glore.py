"""The Global Reasoning (GloRe) unit of the NSROM classifier (paper §3.1; docs/method.md §1).

NSROM puts one GloRe unit (Chen et al., "Graph-Based Global Reasoning Networks", CVPR 2019)
between the classifier's extra convolutions and its CAM head, so that every pixel can exchange
information with every other pixel: distant, disjoint objects of a class can then be activated
together. The unit, on a feature map X of shape (B, D, H, W) with N nodes and S state channels:

1. state ``= conv1x1_S(X)`` -> (B, S, HW) and ``proj = conv1x1_N(X)`` -> (B, N, HW).
2. Projection to the interaction space (GloRe Eq. 3): ``V = state · projᵀ`` -> (B, S, N);
   node j is the sum over all pixels i of ``proj[j, i] · state[:, i]`` (the learned ``b_ij``).
3. Graph convolution (GloRe Eq. 6, ``Z = ((I − A_g) V) W_g``): ``H = V + A(V)`` where ``A`` is
   a 1x1 Conv1d over the node dimension (a learnable N x N adjacency with bias; the sign of the
   paper's ``−A_g`` is absorbed into the learned weights), then ``Z = W(ReLU(H))`` where ``W`` is
   a 1x1 Conv1d over the state dimension without bias (the state update ``W_g``).
4. Reverse projection with the *same* projection weights (GloRe Eq. 7): ``Y = Z · proj`` ->
   (B, S, HW), reshaped to (B, S, H, W).
5. Residual output: ``X + BatchNorm(conv1x1_D(Y))`` (the conv has no bias).

This follows the reference implementation (``GloRe_Unit_2D(512, 64)`` in the official
``global_reasoning_unit.py``: D = 512, N = 64, S = 128, BatchNorm eps 1e-4, no 1/HW
normalisation of V). Module names differ from the reference for readability:
``gcn.conv1 -> gcn.adjacency``, ``gcn.conv2 -> gcn.state_update``, ``blocker -> bn``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GraphConv", "GloRe"]


class GraphConv(nn.Module):
    """Graph convolution over N nodes of S-dimensional state: ``Z = W(ReLU(V + A(V)))``."""

    def __init__(self, num_state: int, num_nodes: int) -> None:
        """num_state: S, channels of each node's state; num_nodes: N, number of graph nodes."""
        super().__init__()
        # A: the learnable N x N adjacency, a 1x1 Conv1d over the node dimension (with bias).
        self.adjacency = nn.Conv1d(num_nodes, num_nodes, kernel_size=1)
        self.relu = nn.ReLU()  # not in place: H is returned too
        # W_g: the state update, a 1x1 Conv1d over the state dimension (no bias).
        self.state_update = nn.Conv1d(num_state, num_state, kernel_size=1, bias=False)

    def forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(Z, H)`` for node states ``v``.

        v: (B, S, N) float, the node features. Returns Z: (B, S, N), the updated node features,
        and H: (B, S, N), the node features after the adjacency step (before ReLU).
        """
        # GloRe Eq. 6, node-wise part: H = (I - A_g) V, written as H = V + A(V).
        h = self.adjacency(v.transpose(1, 2)).transpose(1, 2)  # (B, N, S) -> (B, S, N)
        h = h + v  # (B, S, N)
        # GloRe Eq. 6, state-wise part: Z = H W_g (after a ReLU, as the reference does).
        z = self.state_update(self.relu(h))  # (B, S, N)
        return z, h


class GloRe(nn.Module):
    """Global reasoning unit: pixels -> N graph nodes -> graph convolution -> pixels, residual.

    Input and output have the same shape (B, D, H, W); see the module docstring for the steps.
    """

    def __init__(
        self, in_channels: int, num_nodes: int = 64, num_state: int = 128, normalize: bool = False
    ) -> None:
        """in_channels: D; num_nodes: N (reference 64); num_state: S (reference 128);
        normalize: divide V by the number of pixels HW (an option of the reference code, off there).
        """
        super().__init__()
        self.in_channels = in_channels
        self.num_nodes = num_nodes
        self.num_state = num_state
        self.normalize = normalize
        # phi: the state transform, 1x1 conv D -> S.
        self.conv_state = nn.Conv2d(in_channels, num_state, kernel_size=1)
        # theta: the projection (b_ij), 1x1 conv D -> N; reused for the reverse projection.
        self.conv_proj = nn.Conv2d(in_channels, num_nodes, kernel_size=1)
        self.gcn = GraphConv(num_state, num_nodes)
        # Back to D channels (no bias), then BatchNorm, then the residual sum.
        self.conv_extend = nn.Conv2d(num_state, in_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(in_channels, eps=1e-4)

    def forward(
        self, x: Tensor, return_parts: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Apply the unit to ``x``: (B, D, H, W) float; returns (B, D, H, W).

        With ``return_parts=True`` returns ``(out, parts)`` where ``parts`` holds the
        intermediate tensors, for teaching: ``state`` (B, S, H, W), ``proj`` (B, N, H, W) — the
        weight of every pixel for every node —, ``V`` (B, S, N), ``H`` (B, S, N), ``Z`` (B, S, N)
        and ``Y`` (B, S, H, W).
        """
        B, D, H, W = x.shape
        # Step 1: state and projection maps, flattened over pixels.
        state = self.conv_state(x).reshape(B, self.num_state, H * W)  # (B, S, HW)
        proj = self.conv_proj(x).reshape(B, self.num_nodes, H * W)  # (B, N, HW)
        # Step 2 (GloRe Eq. 3): projection to the node space, V = state · projᵀ.
        v = torch.matmul(state, proj.transpose(1, 2))  # (B, S, N)
        if self.normalize:
            v = v * (1.0 / (H * W))
        # Step 3 (GloRe Eq. 6): graph convolution, H = V + A(V), Z = W(ReLU(H)).
        z, h = self.gcn(v)  # (B, S, N), (B, S, N)
        # Step 4 (GloRe Eq. 7): reverse projection with the same weights, Y = Z · proj.
        y = torch.matmul(z, proj).reshape(B, self.num_state, H, W)  # (B, S, H, W)
        # Step 5: back to D channels, BatchNorm, residual.
        out = x + self.bn(self.conv_extend(y))  # (B, D, H, W)
        if not return_parts:
            return out
        parts = {
            "state": state.reshape(B, self.num_state, H, W),  # (B, S, H, W)
            "proj": proj.reshape(B, self.num_nodes, H, W),  # (B, N, H, W)
            "V": v,
            "H": h,
            "Z": z,
            "Y": y,
        }
        return out, parts
