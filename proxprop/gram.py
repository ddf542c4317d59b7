"""Gram matrices A^T A of convolution im2col matrices, without materialising A.

Two ways, both exact:

* ``unfold``: im2col in batch chunks and accumulate A_chunk^T A_chunk with one GEMM each;
  2 n p^2 flops (n = batch * output positions, p = C k_h k_w), any stride/dilation.
* ``shift`` (stride 1, dilation 1): an entry of A^T A pairs input channel c at kernel offset
  (ki, kj) with channel c' at (ki', kj'); it is the sum, over the output window that offset
  (ki, kj) reads, of the per-position products  P_s[u, v] = sum_b x[b,c,u,v] x[b,c',u+sy,v+sx]
  with s = (ki'-ki, kj'-kj).  Only (2k_w - 1) k_h shifts exist, each window is a rectangle,
  so one batched product per kernel row (reduction over the batch) plus 2-d prefix sums give
  every entry.  About 2 B H_p W_p C^2 k_h (2k_w - 1) flops instead of 2 n p^2: ~10x fewer for
  5x5 kernels.  Shifted positions are flat offsets into the padded image, so the shifted
  operands are strided views of one (positions, C, B) tensor and need no copies.
* ``fft`` (stride 1, dilation 1; gram_fft.py): every channel pair's cross-correlation from
  Fourier transforms, corrected along the image's edges; about 8 B C^2 H W / 2 flops in the
  products plus the transforms, fewer still than the shift method for 5x5 kernels.

All three are exact up to rounding; the automatic choice is the cheapest by a cost model
measured on this CPU (conv2d_gram_flops).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .gram_fft import fft_gram_applies, fft_gram_flops, gram_fft, window_column_sums
from .strategies import GRAM_METHODS, check_choice
from .threads import single_threaded

__all__ = ["conv2d_gram", "conv2d_gram_flops", "row_gram"]

#: Elements of one im2col chunk (bounded memory: 8M elements = 32 MB in float32).
_CHUNK_ELEMENTS = 8_000_000
#: The shift method's batched products (counted with their wasted pairs, see _shift_flops) in
#: GEMM-flop equivalents: measured on the idle 2-core CPU at 150-160 GFLOP/s for 16-20
#: channels and 80 for 3 channels, against GEMM's 100-200 (so few channels count twice; a
#: single-threaded CPU-time measurement under load gave the same 2:1).
_SHIFT_SLOWDOWN = 1.3
_FEW_CHANNELS = 8
_UNFOLD_SLOWDOWN = 2.0  # im2col copies on top of the GEMM
#: Rows (positions x channels) of one grouped product in the shift method: measured on the
#: idle CPU, 32 beats 64 by 8-25% (less waste, see _shift_flops) and 16 is no faster.
_GROUP_ROWS = 32


#: Rows per block of row_gram's upper triangle: smaller blocks skip more of the lower
#: triangle but run GEMMs of lower efficiency (measured single-threaded, 500 rows: full
#: a @ a.T 14.7 ms for 3072 columns, 2/4/6 blocks 11.2/9.9/9.2 ms; same figures for 1000 and
#: 4000 columns).
_ROW_GRAM_BLOCK = 84


def row_gram(a: Tensor) -> Tensor:
    """a @ a.T (n x n) for a 2-d ``a``, computing only the upper triangle's row blocks.

    Each row block i is one GEMM against rows i.. (its diagonal block and everything right of
    it); the rest of the lower triangle is copied from the upper.  About (1 + 1/blocks) / 2
    of the full product's flops.  On CUDA the full product is used: GEMM is cheap there and
    each block costs a launch.
    """
    n = a.shape[0]
    blocks = n // _ROW_GRAM_BLOCK
    if a.device.type != "cpu" or blocks < 2:
        return a @ a.T
    out = a.new_empty(n, n)
    bounds = [n * i // blocks for i in range(blocks + 1)]
    for start, stop in itertools.pairwise(bounds):
        upper = a[start:stop] @ a[start:].T
        out[start:stop, start:] = upper
        out[stop:, start:stop] = upper[:, stop - start:].T
    return out


def _shift_applies(stride: Sequence[int], dilation: Sequence[int]) -> bool:
    return tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)


def _method_costs(x: Tensor, kernel_size, stride, padding, dilation) -> dict[str, float]:
    """GEMM-flop-equivalent cost of every method that applies to this convolution."""
    costs = {"unfold": _unfold_flops(x, kernel_size, stride, padding, dilation)}
    if _shift_applies(stride, dilation):
        costs["shift"] = _shift_flops(x, kernel_size, padding)
        if fft_gram_applies(tuple(x.shape), tuple(kernel_size), tuple(padding)):
            costs["fft"] = fft_gram_flops(tuple(x.shape), tuple(kernel_size), tuple(padding))
    return costs


def _gram_method(x: Tensor, kernel_size, stride, padding, dilation, method: str | None) -> tuple[str, float]:
    """(method, its cost): ``method`` where it applies, else the cheapest; "shift" and "fft"
    apply to stride-1 undilated convolutions only (elsewhere "unfold" is used)."""
    check_choice("gram_method", method, GRAM_METHODS)
    costs = _method_costs(x, kernel_size, stride, padding, dilation)
    if method is None:
        method = min(costs, key=costs.__getitem__)
    chosen = method if method in costs else "unfold"
    return chosen, costs[chosen]


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _unfold_flops(x: Tensor, kernel_size, stride, padding, dilation) -> float:
    batch, channels, h, w = x.shape
    kh, kw = kernel_size
    out_h = _out_size(h, kh, stride[0], padding[0], dilation[0])
    n = batch * out_h * _out_size(w, kw, stride[1], padding[1], dilation[1])
    p = channels * kh * kw
    return _UNFOLD_SLOWDOWN * 2.0 * n * p * p


def _shift_flops(x: Tensor, kernel_size, padding) -> float:
    """Each group of `width` positions is multiplied with the `reach` positions it can pair
    with (_gram_shift), of which 2 kw - 1 per position are used: few channels mean wide groups
    and much waste (3 channels: 29 computed per 9 used)."""
    batch, channels, h, w = x.shape
    kh, kw = kernel_size
    positions = (h + 2 * padding[0]) * (w + 2 * padding[1])
    reach = max(1, _GROUP_ROWS // channels) + 2 * kw - 2
    slowdown = _SHIFT_SLOWDOWN * (2.0 if channels < _FEW_CHANNELS else 1.0)
    return slowdown * 2.0 * batch * positions * channels * channels * kh * reach


def conv2d_gram_flops(x: Tensor, kernel_size, stride, padding, dilation, *, method: str | None = None) -> float:
    """GEMM-flop-equivalent cost of conv2d_gram with the method it would pick."""
    return _gram_method(x, kernel_size, stride, padding, dilation, method)[1]


def conv2d_gram(
    x: Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    has_bias: bool,
    *,
    method: str | None = None,
) -> Tensor:
    """A^T A for A = [unfold(x) rows, 1] (p x p with p = C*kh*kw + has_bias).

    method: None (the cheapest by the cost model), "unfold", "shift" or "fft" (the last two
    for stride 1, dilation 1 only; elsewhere "unfold" is used)."""
    chosen, _ = _gram_method(x, kernel_size, stride, padding, dilation, method)
    if chosen == "fft":
        kernel, pads = (kernel_size[0], kernel_size[1]), (padding[0], padding[1])
        # one thread: with another process on a core, the per-frequency products (hundreds of
        # small parallel regions) made the 2-thread version 1.5-3x slower in wall time than
        # this (median of 5 under load: 84/174/118 ms vs 368/241/320 ms on the paper's layers)
        with single_threaded(x.device):
            gram = gram_fft(x, kernel, pads)
        if not has_bias:
            return gram
        out_positions = (x.shape[2] + 2 * pads[0] - kernel[0] + 1) * (x.shape[3] + 2 * pads[1] - kernel[1] + 1)
        return _with_bias(gram, window_column_sums(x, kernel, pads), x.shape[0] * out_positions)
    if chosen == "shift":
        return _gram_shift(x, tuple(kernel_size), tuple(padding), has_bias)
    return _gram_unfold(x, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), has_bias)


def _with_bias(gram: Tensor, col_sums: Tensor, count: int) -> Tensor:
    corner = torch.full((1, 1), float(count), dtype=gram.dtype, device=gram.device)
    return torch.cat(
        [torch.cat([gram, col_sums[:, None]], dim=1), torch.cat([col_sums[None, :], corner], dim=1)],
        dim=0,
    )


def _gram_unfold(x: Tensor, kernel_size, stride, padding, dilation, has_bias: bool) -> Tensor:
    batch, channels = x.shape[:2]
    kh, kw = kernel_size
    p0 = channels * kh * kw
    positions = _out_size(x.shape[2], kh, stride[0], padding[0], dilation[0]) * _out_size(
        x.shape[3], kw, stride[1], padding[1], dilation[1]
    )
    chunk = max(1, _CHUNK_ELEMENTS // max(1, p0 * positions))
    gram = torch.zeros(p0, p0, dtype=x.dtype, device=x.device)
    col_sums = torch.zeros(p0, dtype=x.dtype, device=x.device)
    for start in range(0, batch, chunk):
        cols = F.unfold(x[start:start + chunk], (kh, kw), dilation=dilation, padding=padding, stride=stride)
        mat = cols.transpose(1, 2).reshape(-1, p0)
        gram.addmm_(mat.T, mat)
        if has_bias:
            col_sums += mat.sum(dim=0)
    return _with_bias(gram, col_sums, batch * positions) if has_bias else gram


def _window_masks(hp: int, wp: int, kh: int, kw: int, ho: int, wo: int, like: Tensor) -> Tensor:
    """(kh*kw, hp*wp) 0/1 matrix: row (ki, kj) marks the output window [ki, ki+ho) x [kj, kj+wo)
    that kernel offset (ki, kj) reads, so window sums of per-position values are one GEMM."""
    rows = torch.arange(hp, device=like.device)
    cols = torch.arange(wp, device=like.device)
    k_rows = torch.arange(kh, device=like.device)[:, None]
    k_cols = torch.arange(kw, device=like.device)[:, None]
    in_rows = (rows >= k_rows) & (rows < k_rows + ho)  # (kh, hp)
    in_cols = (cols >= k_cols) & (cols < k_cols + wo)  # (kw, wp)
    mask = in_rows[:, None, :, None] & in_cols[None, :, None, :]
    return mask.reshape(kh * kw, hp * wp).to(like.dtype)


def _gram_shift(x: Tensor, kernel_size, padding, has_bias: bool) -> Tensor:
    batch, channels, h, w = x.shape
    kh, kw = kernel_size
    hp, wp = h + 2 * padding[0], w + 2 * padding[1]
    ho, wo = hp - kh + 1, wp - kw + 1
    span = 2 * kw - 1
    pos = hp * wp
    # positions are processed in groups of `width`: one product of the group's (width*C x B)
    # block with the (width + span - 1)*C x B block it reaches gives every pair it needs (a band
    # of the result) with GEMM sizes that run near full speed
    width = max(1, _GROUP_ROWS // channels)
    reach = width + span - 1
    # (positions, C, B) with kw - 1 zero positions in front and enough behind, so that every
    # shifted block is in bounds (pairs that wrap around a row only feed unused entries)
    xt = x.new_zeros(pos + 2 * (kw - 1) + width, channels, batch)
    interior = xt[kw - 1:kw - 1 + pos].view(hp, wp, channels, batch)
    interior[padding[0]:padding[0] + h, padding[1]:padding[1] + w] = x.permute(2, 3, 1, 0)
    block = channels * batch
    masks = _window_masks(hp, wp, kh, kw, ho, wo, x)
    # the products (large GEMMs, all threads) first, then the bookkeeping: window sums and
    # scatters are many small operations, run single-threaded (threads.py: on a shared CPU each
    # small parallel region waits for a descheduled thread)
    products = []
    for sy in range(kh):
        length = pos - sy * wp
        groups = -(-length // width)
        left = xt.as_strided((groups, width * channels, batch), (width * block, batch, 1), (kw - 1) * block)
        right = xt.as_strided((groups, reach * channels, batch), (width * block, batch, 1), sy * wp * block)
        products.append(torch.bmm(left, right.transpose(1, 2)))  # (G, width*C, reach*C)
    plane = xt[kw - 1:kw - 1 + pos].sum(dim=2) if has_bias else None  # (positions, C)
    with single_threaded(x.device):
        gram = _assemble_shift(products, masks, pos, wp, kh, kw, width, reach, channels)
        if plane is None:
            return gram
        col = masks @ plane  # (kh*kw, C)
        return _with_bias(gram, col.T.reshape(-1), batch * ho * wo)


def _assemble_shift(products: list[Tensor], masks: Tensor, pos: int, wp: int, kh: int, kw: int,
                    width: int, reach: int, channels: int) -> Tensor:
    """Window sums of the shift products, scattered into A^T A (see _gram_shift)."""
    span = 2 * kw - 1
    pair = channels * span * channels
    like = products[0]
    # blocks[ki, kj, ki', kj', c, c'] for ki' > ki ("upper") and ki' == ki ("same_row"); the
    # entries with ki' < ki follow by symmetry
    upper = like.new_zeros(kh, kw, kh, kw, channels, channels)
    same_row = like.new_zeros(kh, kw, kh, kw, channels, channels)
    s_j = channels
    s_c = reach * channels
    s_i = channels * s_c
    for sy, full in enumerate(products):
        length = pos - sy * wp
        groups = full.shape[0]
        band = full.as_strided(
            (groups, width, channels, span, channels), (width * s_i, s_i + s_j, s_c, s_j, 1)
        )  # P[q = g*width + i, c, sx, c'] = sum_b x[q, c] x[q + sy*wp + sx, c']
        prod = band.reshape(groups * width, pair)[:length]
        rows = (kh - sy) * kw
        sums = (masks[:rows, :length] @ prod).reshape(kh - sy, kw, channels, span, channels)
        ki, kj, j = _shift_indices(kh - sy, kw, like.device)
        target = same_row if sy == 0 else upper
        target[ki, kj, ki + sy, kj + j - (kw - 1)] = sums[ki, kj, :, j, :]
    p0 = channels * kh * kw
    upper = upper.permute(4, 0, 1, 5, 2, 3).reshape(p0, p0)
    return upper + upper.T + same_row.permute(4, 0, 1, 5, 2, 3).reshape(p0, p0)


def _shift_indices(rows: int, kw: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """All (ki, kj, j) with ki < rows, kj and kj + sx in [0, kw), sx = j - (kw - 1)."""
    ki, kj, j = torch.meshgrid(
        torch.arange(rows), torch.arange(kw), torch.arange(2 * kw - 1), indexing="ij"
    )
    partner = kj + j - (kw - 1)
    keep = (partner >= 0) & (partner < kw)
    return ki[keep].to(device), kj[keep].to(device), j[keep].to(device)
