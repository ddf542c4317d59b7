"""A^T A of a stride-1 convolution's im2col matrix from Fourier transforms of its input.

An entry of A^T A pairs input channel c at kernel offset k = (ki, kj) with channel c' at k':
    G[(c, k), (c', k')] = sum_b sum_{o in O} x[b, c, o + k - P] x[b, c', o + k' - P]
over the output positions O = [0, h_o) x [0, w_o) (x zero outside the image, P the padding).
Summed over all o instead of O it is the cross-correlation R_cc'(k' - k) of the two channel
planes, which depends on the shift only: one real FFT of every plane, one (C x C) product over
the batch per frequency, one inverse FFT, about 8 B C^2 H W / 2 flops in all (the shift method
of gram.py needs about 2 B C^2 H W k_h (2 k_w - 1)).  Small planes (the paper ConvNet's 32x32,
16x16 and 8x8) are transformed by the separable DFT as matrix products instead (along the
rows, then along the columns), which runs faster than the FFT and its transpose to
frequency-major order and yields that order directly.

The positions o outside O whose patches still touch the image lie in bands of
beta = k - 1 - P rows (columns) along the image's edges (none for padding >= k - 1), so
    sum over O = sum over all o - (rows outside) - (columns outside) + (both outside),
where "rows outside" needs, per band, the correlations along the rows of the band's rows with
one another (a 1-D transform of beta rows), "columns outside" the same for columns, and "both
outside" the Gram matrix of the beta x beta corner pixels.  Which band rows pair for which
kernel offsets is a fixed 0/1 tensor (_band_masks).  Exact up to rounding; the transforms
and their products run in the input's dtype.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["fft_gram_applies", "fft_gram_flops", "gram_fft", "window_column_sums"]

#: The transform and the transpose to frequency-major order per padded input point, in
#: GEMM-flop equivalents (rfft2 of these small sizes runs at 3-4 ns per point on one core).
_TRANSFORM_FLOPS = 700.0
#: Measured single-threaded CPU time of the paper's three convolutions (batch 500) over the
#: model: 1.6x, where the shift method's model (gram.py) fits its own measured time.  With the
#: separable transform the model reads 0.73 / 1.43 / 0.79 Gflop-equivalents for 9.3 / 15 /
#: 10.7 ms: 80-130 Gflop/s, the GEMM rate the other methods' models assume.
_FFT_SLOWDOWN = 1.6


def _band(kernel: int, padding: int) -> int:
    """Rows (columns) along each edge whose patches reach outside the output window."""
    return max(0, kernel - 1 - padding)


def fft_gram_applies(x_shape: tuple[int, ...], kernel_size: tuple[int, ...], padding: tuple[int, ...]) -> bool:
    """True if the edge bands fit in the image (always, but for tiny images without padding)."""
    return all(_band(k, p) <= size for size, k, p in zip(x_shape[2:], kernel_size, padding, strict=True))


def _fft_length(size: int) -> int:
    """Transform length for ``size`` samples: even (a real DFT of even length has L/2 + 1 terms)."""
    return size + size % 2


def fft_gram_flops(x_shape: tuple[int, ...], kernel_size: tuple[int, ...], padding: tuple[int, ...]) -> float:
    """GEMM-flop-equivalent cost of gram_fft (see _TRANSFORM_FLOPS and _FFT_SLOWDOWN)."""
    batch, channels, h, w = x_shape
    kh, kw = kernel_size
    lh, lw = _fft_length(h + kh - 1), _fft_length(w + kw - 1)
    transforms = min(_transform_flops(x_shape, (lh, lw)))
    products = 12.0 * batch * channels**2 * lh * (lw // 2 + 1)  # 6 B C^2 per frequency, at half speed
    bh, bw = _band(kh, padding[0]), _band(kw, padding[1])
    # per edge band: its rows' (columns') 1-D transforms and per-frequency products (_correlation_1d)
    bands = 2 * batch * channels * (bh * (lw // 2 + 1) * (4.0 * w + 8.0 * channels * bh)
                                    + bw * (lh // 2 + 1) * (4.0 * h + 8.0 * channels * bw))
    corners = 4 * 2.0 * batch * (channels * bh * bw) ** 2
    return _FFT_SLOWDOWN * (transforms + products + bands + corners)


@functools.lru_cache(maxsize=64)
def _inverse_table(full_length: int, full_kernel: int, half_length: int, half_kernel: int,
                   dtype: torch.dtype, device: torch.device) -> Tensor:
    """(2 F_half L_full, D) table: [Re; Im] of a spectrum over (f_half, f_full) (f_half-major:
    _spectra's (f_w, f_h) order, w being the half axis) that is Hermitian and stored for
    f_half <= half_length/2 only (torch.fft.rfft's half) -> its inverse DFT at the D shifts
    (d_full, d_half), |d_full| < full_kernel, |d_half| < half_kernel (computed in float64)."""
    fh = torch.arange(half_length // 2 + 1, dtype=torch.float64)[:, None, None, None]
    ff = torch.arange(full_length, dtype=torch.float64)[None, :, None, None]
    df = torch.arange(-(full_kernel - 1), full_kernel, dtype=torch.float64)[None, None, :, None]
    dh = torch.arange(-(half_kernel - 1), half_kernel, dtype=torch.float64)[None, None, None, :]
    angle = 2.0 * torch.pi * (ff * df / full_length + fh * dh / half_length)
    weight = torch.full_like(fh, 2.0)  # a stored term stands for its mirror too ...
    weight[0] = 1.0  # ... but the zero and the Nyquist term (even lengths) are their own
    weight[-1] = 1.0
    cos = (weight * angle.cos()).reshape(-1, angle.shape[2] * angle.shape[3])
    sin = (weight * angle.sin()).reshape(cos.shape)
    return (torch.cat([cos, -sin], dim=0) / (full_length * half_length)).to(device, dtype)


def _frequency_major(spectra: Tensor) -> Tensor:
    """rfft2's (batch, a, L_h, F_w) complex -> (F, 2, batch, a) real, frequencies (f_w, f_h):
    one transpose, so that every frequency's real and imaginary (batch x a) blocks are
    contiguous."""
    batch, a, length, half = spectra.shape
    flat = torch.view_as_real(spectra).reshape(batch * a, length, half, 2)
    return flat.permute(2, 1, 3, 0).contiguous().view(-1, 2, batch, a)


def _spectral_gram(spectra: Tensor) -> Tensor:
    """spectra (F, 2, batch, a) = [Re, Im] -> (2F, a, a) = [Re; Im] of sum_b conj(X_a) X_a'.

    Re = Re^T Re + Im^T Im is one product over the stacked rows; Im = Re^T Im - (Re^T Im)^T
    (complex batched products run far slower on the CPU)."""
    freqs, _, batch, a = spectra.shape
    stacked = spectra.view(freqs, 2 * batch, a)
    ri = spectra[:, 0].mT @ spectra[:, 1]
    return torch.cat([stacked.mT @ stacked, ri - ri.mT])


def _inverse_at_shifts(spectra: Tensor, table: Tensor) -> Tensor:
    """spectra (F, 2, batch, a) -> (a, a, D): the correlations at the table's D shifts."""
    gram = _spectral_gram(spectra)  # (2F, a, a)
    a = gram.shape[-1]
    return (gram.reshape(gram.shape[0], a * a).T @ table).reshape(a, a, -1)


@functools.lru_cache(maxsize=64)
def _axis_tables(height: int, width: int, lengths: tuple[int, int], dtype: torch.dtype,
                 device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The separable DFT of a (h x w) plane zero-padded to ``lengths``, as matrices (computed
    in float64): along w the real plane's half spectrum, (2 F_w, w) with rows (f_w, re/im);
    along h the complex transform of those rows, as the (2 L_h, h) matrices that multiply
    their real and their imaginary parts, rows (f_h, re/im)."""
    def angles(length: int, size: int, frequencies: int) -> Tensor:
        f = torch.arange(frequencies, dtype=torch.float64)[:, None]
        return 2.0 * torch.pi * f * torch.arange(size, dtype=torch.float64)[None, :] / length

    along_w = angles(lengths[1], width, lengths[1] // 2 + 1)
    cos_w, sin_w = along_w.cos(), -along_w.sin()  # e^{-i angle} = cos - i sin
    along_h = angles(lengths[0], height, lengths[0])
    cos_h, sin_h = along_h.cos(), -along_h.sin()
    # (re + i im)(cos + i sin) = (cos re - sin im) + i (sin re + cos im)
    rows_w = torch.stack([cos_w, sin_w], dim=1).reshape(-1, width)
    times_real = torch.stack([cos_h, sin_h], dim=1).reshape(-1, height)
    times_imag = torch.stack([-sin_h, cos_h], dim=1).reshape(-1, height)
    return rows_w.to(device, dtype), times_real.to(device, dtype), times_imag.to(device, dtype)


def _transform_flops(x_shape: tuple[int, ...], lengths: tuple[int, int]) -> tuple[float, float]:
    """(FFT, separable matrix products) cost in GEMM-flop equivalents.  The FFT is priced per
    padded point with its transpose to frequency-major order (_TRANSFORM_FLOPS); the products
    are 2 (2 F_w) w flops per plane row, then 2 x 2 (2 L_h) h per plane and f_w.  Measured
    single-threaded at batch 500: 32x32 planes of 3 channels 5.6 vs 8.4 ms (FFT), 16x16 of 16
    channels 6.2 vs 15.6 ms, 8x8 of 20 channels 1.9 vs 4.4 ms; the FFT wins on large planes."""
    batch, channels, h, w = x_shape
    half = lengths[1] // 2 + 1
    planes = batch * channels
    fft = _TRANSFORM_FLOPS * planes * lengths[0] * lengths[1]
    products = planes * (2.0 * 2 * half * w * h + 2 * 2.0 * 2 * lengths[0] * h * half)
    return fft, products


def _spectra(x: Tensor, lengths: tuple[int, int], *, matmul: bool | None = None) -> Tensor:
    """x (batch, a, h, w) -> (F, 2, batch, a): the zero-padded planes' rfft2 spectra,
    frequency-major with frequencies ordered (f_w, f_h); by the separable DFT as matrix
    products or by torch.fft (None: the cheaper, _transform_flops)."""
    batch, a, h, w = x.shape
    if matmul is None:
        fft, products = _transform_flops(tuple(x.shape), lengths)
        matmul = products < fft
    if not matmul:
        return _frequency_major(torch.fft.rfft2(x, s=lengths))
    along_w, real_h, imag_h = _axis_tables(h, w, lengths, x.dtype, x.device)
    half = along_w.shape[0] // 2
    rows = (along_w @ x.reshape(batch * a * h, w).mT).view(half, 2, batch * a, h)  # (f_w, re/im, plane, h)
    # per f_w: (2 L_h x h) @ (h x planes) for the real and the imaginary part, one bmm each
    # (matmul's broadcast of the table took 3x longer for 8x8 planes); the second accumulates
    # in place (an out-of-place sum's new 14 MB cost more in page faults than its product)
    out = torch.bmm(real_h.expand(half, -1, -1), rows[:, 0].mT)
    out.baddbmm_(imag_h.expand(half, -1, -1), rows[:, 1].mT)  # (F_w, (f_h, re/im), planes)
    return out.view(-1, 2, batch, a)


def _correlation_1d(signals: Tensor, batch: int, kernel: int) -> Tensor:
    """signals (batch * a, n), rows ordered (b, a) -> (a, a, 2 kernel - 1):
    sum_b sum_j v_a(j) v_a'(j + d), |d| < kernel.

    The 1-D case of _correlation_2d: one product with the real DFT's table (length at least
    n + kernel - 1, so that no shift wraps around), the per-frequency products over the batch,
    the inverse at the shifts.  Four operations where a product per shift and the assembly
    took about twenty (1.6 ms per band for the paper ConvNet's layers)."""
    n = signals.shape[-1]
    length = _fft_length(n + kernel - 1)
    forward = _axis_tables(1, n, (1, length), signals.dtype, signals.device)[0]
    spectra = (forward @ signals.mT).view(-1, 2, batch, signals.shape[0] // batch)
    return _inverse_at_shifts(spectra, _inverse_table(1, 1, length, kernel, signals.dtype, signals.device))


def _correlation_2d(x: Tensor, lengths: tuple[int, int], kernels: tuple[int, int]) -> Tensor:
    """x (batch, a, h, w) -> (a, a, 2 k_h - 1, 2 k_w - 1): sum_b sum_u x_a(u) x_a'(u + d)
    over both axes, |d| < kernel per axis."""
    spectra = _spectra(x, lengths)
    table = _inverse_table(lengths[0], kernels[0], lengths[1], kernels[1], x.dtype, x.device)
    a = x.shape[1]
    return _inverse_at_shifts(spectra, table).reshape(a, a, 2 * kernels[0] - 1, 2 * kernels[1] - 1)


@functools.lru_cache(maxsize=64)
def _band_masks(kernel: int, padding: int) -> tuple[Tensor, Tensor]:
    """0/1 tensors (k, k', r, r') for the low (top/left) and high (bottom/right) band.

    Low band, rows r in [0, beta): output rows o < 0 read row r = o + k - P, so entry
    (k, k') collects the row pairs (r, r + k' - k) with 0 <= r < k - P and r + k' - k >= 0.
    High band, rows size - beta + r: output rows o >= h_o read r >= k, and the partner row
    r + k' - k must lie in the image (< beta)."""
    beta = _band(kernel, padding)
    low = torch.zeros(kernel, kernel, beta, beta)
    high = torch.zeros(kernel, kernel, beta, beta)
    for k in range(kernel):
        for k2 in range(kernel):
            for r in range(beta):
                partner = r + k2 - k
                if not 0 <= partner < beta:
                    continue
                if r < k - padding:
                    low[k, k2, r, partner] = 1.0
                if r >= k:
                    high[k, k2, r, partner] = 1.0
    return low, high


@functools.lru_cache(maxsize=64)
def _edge_masks(kernel: int, padding: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(2, k, k, beta, beta): _band_masks' low and high band, on the device in the dtype."""
    return torch.stack(_band_masks(kernel, padding)).to(device, dtype)


@functools.lru_cache(maxsize=64)
def _corner_masks(kh: int, pad_h: int, kw: int, pad_w: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """(2, 2, kh, kh, kw, kw, bh, bh, bw, bw): the row and the column band masks combined, for
    the corners (which pixel pairs of a corner feed which pair of kernel offsets)."""
    return torch.einsum("nabrs,mjlqt->nmabjlrsqt", _edge_masks(kh, pad_h, dtype, device),
                        _edge_masks(kw, pad_w, dtype, device))


def _by_offsets(corr: Tensor, kernel: int, dim: int) -> Tensor:
    """A correlation over the shifts -(kernel-1)..kernel-1 along ``dim`` -> (..., k, k', ...)
    indexed by the two kernel offsets, entry corr[k' - k]: the windows of ``kernel`` shifts
    (window s, position t reads shift s + t), flipped so that s = kernel - 1 - k."""
    return corr.unfold(dim, kernel, 1).flip(dim).movedim(-1, dim + 1)


def gram_fft(x: Tensor, kernel_size: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """A^T A (p0 x p0, p0 = C kh kw; no bias column) of a stride-1, undilated convolution of x.

    Requires fft_gram_applies(x.shape, kernel_size, padding)."""
    batch, channels, h, w = x.shape
    kh, kw = kernel_size
    bh, bw = _band(kh, padding[0]), _band(kw, padding[1])
    lengths = (_fft_length(h + kh - 1), _fft_length(w + kw - 1))
    # gram[c, ki, kj, c', ki', kj'] starts as the full correlation R_cc'(k' - k); one copy into
    # the final layout, which the corrections below update in place
    full = _correlation_2d(x, lengths, (kh, kw))
    windows = _by_offsets(_by_offsets(full, kh, 2), kw, 4)  # (c, c', ki, ki', kj, kj')
    gram = windows.permute(0, 2, 4, 1, 3, 5).contiguous()
    row_masks = _edge_masks(kh, padding[0], x.dtype, x.device)  # (2, kh, kh, bh, bh)
    col_masks = _edge_masks(kw, padding[1], x.dtype, x.device)
    # the edge rows (top and bottom bands, (B, C, bh, w) each), copied once: the row
    # corrections and the corners read them
    row_bands = [x[:, :, rows].contiguous() for rows in (slice(0, bh), slice(h - bh, h))] if bh > 0 else []
    if bh > 0:  # output rows outside the window: pairs of rows within one edge band
        corr = torch.stack([
            _correlation_1d(band.view(-1, w), batch, kw)  # signals ordered (b, c, r)
            for band in row_bands
        ]).reshape(2, channels, bh, channels, bh, -1)
        corr = _by_offsets(corr, kw, 5)  # (2, c, r, c', r', kj, kj')
        gram -= torch.einsum("nabrs,ncrdsjl->cajdbl", row_masks, corr)
    if bw > 0:  # output columns outside the window
        corr = torch.stack([
            _correlation_1d(x[..., cols].transpose(2, 3).reshape(-1, h), batch, kh)  # (b, c, q)
            for cols in (slice(0, bw), slice(w - bw, w))
        ]).reshape(2, channels, bw, channels, bw, -1)
        corr = _by_offsets(corr, kh, 5)  # (2, c, q, c', q', ki, ki')
        gram -= torch.einsum("njlqt,ncqdtab->cajdbl", col_masks, corr)
    if bh > 0 and bw > 0:  # both outside: subtracted twice above; the corners' own Gram matrices
        pixels = torch.stack([
            band[..., cols].reshape(batch, channels * bh * bw)
            for band in row_bands for cols in (slice(0, bw), slice(w - bw, w))
        ])  # (4, B, C bh bw): corners (top, left), (top, right), (bottom, left), (bottom, right)
        corners = (pixels.mT @ pixels).reshape(2, 2, channels, bh, bw, channels, bh, bw)
        masks = _corner_masks(kh, padding[0], kw, padding[1], x.dtype, x.device)
        gram += torch.einsum("nmabjlrsqt,nmcrqdst->cajdbl", masks, corners)
    p0 = channels * kh * kw
    return gram.reshape(p0, p0)


def window_column_sums(x: Tensor, kernel_size: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """Column sums of A (C kh kw,): the sum of channel c over the rows/columns offset k reads."""
    h, w = x.shape[2:]
    plane = x.sum(dim=0)  # (C, h, w)
    row_sel = _window_rows(h, kernel_size[0], padding[0], x)
    col_sel = _window_rows(w, kernel_size[1], padding[1], x)
    return (row_sel @ plane @ col_sel.T).reshape(-1)  # (C, kh, kw)


def _window_rows(size: int, kernel: int, padding: int, like: Tensor) -> Tensor:
    """(kernel, size) 0/1: row i is read by offset k iff 0 <= i - k + P < h_o."""
    out = size + 2 * padding - kernel + 1
    rows = torch.arange(size, device=like.device)[None, :]
    offsets = torch.arange(kernel, device=like.device)[:, None]
    inside = (rows - offsets + padding >= 0) & (rows - offsets + padding < out)
    return inside.to(like.dtype)
