"""A^T A of a stride-1 convolution's im2col matrix from Fourier transforms of its input.

An entry of A^T A pairs input channel c at kernel offset k = (ki, kj) with channel c' at k':
    G[(c, k), (c', k')] = sum_b sum_{o in O} x[b, c, o + k - P] x[b, c', o + k' - P]
over the output positions O = [0, h_o) x [0, w_o) (x zero outside the image, P the padding).
Summed over all o instead of O it is the cross-correlation R_cc'(k' - k) of the two channel
planes, which depends on the shift only: one real FFT of every plane, one (C x C) product over
the batch per frequency, one inverse FFT, about 8 B C^2 H W / 2 flops in all (the shift method
of gram.py needs about 2 B C^2 H W k_h (2 k_w - 1)).  Small planes (the ConvNet's 16x16 and
8x8) are transformed by one matrix product with a DFT table instead, which runs faster than
the FFT and its transpose to frequency-major order and yields that order directly.

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
#: model: 1.6x, where the shift method's model (gram.py) fits its own measured time.
_FFT_SLOWDOWN = 1.6
#: Largest DFT table (elements) the matrix-product transform may use (16 MB in float32).
_MAX_TABLE_ELEMENTS = 4_000_000


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
    transforms = _TRANSFORM_FLOPS * batch * channels * lh * lw
    if _matmul_transform_is_cheaper(x_shape, (lh, lw)):
        transforms = 2.0 * 2 * lh * (lw // 2 + 1) * h * w * batch * channels
    products = 12.0 * batch * channels**2 * lh * (lw // 2 + 1)  # 6 B C^2 per frequency, at half speed
    bh, bw = _band(kh, padding[0]), _band(kw, padding[1])
    bands = 2 * 2.0 * batch * (kw * w * (channels * bh) ** 2 + kh * h * (channels * bw) ** 2)
    corners = 4 * 2.0 * batch * (channels * bh * bw) ** 2
    return _FFT_SLOWDOWN * (transforms + products + bands + corners)


@functools.lru_cache(maxsize=64)
def _inverse_table(full_length: int, full_kernel: int, half_length: int, half_kernel: int,
                   dtype: torch.dtype, device: torch.device) -> Tensor:
    """(2 L_f F_h, D) table: [Re; Im] of a spectrum over (f_f, f_h) that is Hermitian and
    stored for f_h <= half_length/2 only (torch.fft.rfft's layout) -> its inverse DFT at the
    D shifts (d_f, d_h), |d_f| < full_kernel, |d_h| < half_kernel (computed in float64)."""
    ff = torch.arange(full_length, dtype=torch.float64)[:, None, None, None]
    fh = torch.arange(half_length // 2 + 1, dtype=torch.float64)[None, :, None, None]
    df = torch.arange(-(full_kernel - 1), full_kernel, dtype=torch.float64)[None, None, :, None]
    dh = torch.arange(-(half_kernel - 1), half_kernel, dtype=torch.float64)[None, None, None, :]
    angle = 2.0 * torch.pi * (ff * df / full_length + fh * dh / half_length)
    weight = torch.full_like(fh, 2.0)  # a stored term stands for its mirror too ...
    weight[:, 0] = 1.0  # ... but the zero and the Nyquist term (even lengths) are their own
    weight[:, -1] = 1.0
    cos = (weight * angle.cos()).reshape(-1, angle.shape[2] * angle.shape[3])
    sin = (weight * angle.sin()).reshape(cos.shape)
    return (torch.cat([cos, -sin], dim=0) / (full_length * half_length)).to(device, dtype)


def _frequency_major(spectra: Tensor) -> Tensor:
    """(batch, a, *freq) complex -> (F, 2, batch, a) real: one transpose, so that every
    frequency's real and imaginary (batch x a) blocks are contiguous."""
    batch, a = spectra.shape[:2]
    flat = torch.view_as_real(spectra).reshape(batch * a, -1)
    return flat.mT.contiguous().view(-1, 2, batch, a)


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


def _correlation_1d(values: Tensor, kernel: int) -> Tensor:
    """values (n, batch, a) -> (a, a, 2 kernel - 1): sum_b sum_j v_a(j) v_a'(j + d), |d| < kernel.

    Direct: one GEMM over (positions x batch) per shift d >= 0 (the edge bands are narrow, so
    these are few and large); d < 0 is the transpose of -d."""
    n, _, a = values.shape
    corr = values.new_zeros(a, a, 2 * kernel - 1)
    for d in range(min(kernel, n)):
        product = values[:n - d].reshape(-1, a).T @ values[d:].reshape(-1, a)
        corr[:, :, kernel - 1 + d] = product
        corr[:, :, kernel - 1 - d] = product.T
    return corr


@functools.lru_cache(maxsize=64)
def _forward_table(height: int, width: int, lengths: tuple[int, int], dtype: torch.dtype,
                   device: torch.device) -> Tensor:
    """(2 F, h w) real matrix: a (h x w) plane, zero-padded to ``lengths``, -> its rfft2
    spectrum as [Re, Im] rows per frequency, in rfft2's frequency order (computed in float64)."""
    def factors(length: int, size: int, frequencies: int) -> tuple[Tensor, Tensor]:
        f = torch.arange(frequencies, dtype=torch.float64)[:, None]
        angle = 2.0 * torch.pi * f * torch.arange(size, dtype=torch.float64)[None, :] / length
        return angle.cos(), -angle.sin()  # e^{-i angle} = cos - i sin

    cos_h, sin_h = factors(lengths[0], height, lengths[0])
    cos_w, sin_w = factors(lengths[1], width, lengths[1] // 2 + 1)
    real = cos_h[:, None, :, None] * cos_w[None, :, None, :] - sin_h[:, None, :, None] * sin_w[None, :, None, :]
    imag = cos_h[:, None, :, None] * sin_w[None, :, None, :] + sin_h[:, None, :, None] * cos_w[None, :, None, :]
    return torch.stack([real, imag], dim=2).reshape(-1, height * width).to(device, dtype)


def _matmul_transform_is_cheaper(x_shape: tuple[int, ...], lengths: tuple[int, int]) -> bool:
    """The DFT as one GEMM (2 F x h w table, about 2 (2 F) h w flops per plane) beats the FFT
    and its transpose to frequency-major order (_TRANSFORM_FLOPS per padded point) for small
    planes.  Measured single-threaded, batch 500: 16x16 planes with 16 channels 12 vs 16 ms,
    8x8 with 20 channels 1.7 vs 4.1 ms; 32x32 with 3 channels 28 vs 10 ms (FFT kept)."""
    h, w = x_shape[2:]
    table = 2 * lengths[0] * (lengths[1] // 2 + 1) * h * w
    return table <= _MAX_TABLE_ELEMENTS and 2.0 * table < _TRANSFORM_FLOPS * lengths[0] * lengths[1]


def _spectra(x: Tensor, lengths: tuple[int, int], *, matmul: bool | None = None) -> Tensor:
    """x (batch, a, h, w) -> (F, 2, batch, a): the zero-padded planes' rfft2 spectra,
    frequency-major; by one GEMM with a DFT table or by torch.fft (None: the cheaper)."""
    batch, a, h, w = x.shape
    if matmul is None:
        matmul = _matmul_transform_is_cheaper(tuple(x.shape), lengths)
    if not matmul:
        return _frequency_major(torch.fft.rfft2(x, s=lengths))
    table = _forward_table(h, w, lengths, x.dtype, x.device)
    return (table @ x.reshape(batch * a, h * w).mT).view(-1, 2, batch, a)


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


def _shift_index(kernel: int, device: torch.device) -> Tensor:
    """(k, k') -> index of the shift k' - k in a correlation over -(k-1)..k-1."""
    offsets = torch.arange(kernel, device=device)
    return offsets[None, :] - offsets[:, None] + kernel - 1


def gram_fft(x: Tensor, kernel_size: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """A^T A (p0 x p0, p0 = C kh kw; no bias column) of a stride-1, undilated convolution of x.

    Requires fft_gram_applies(x.shape, kernel_size, padding)."""
    batch, channels, h, w = x.shape
    kh, kw = kernel_size
    bh, bw = _band(kh, padding[0]), _band(kw, padding[1])
    lengths = (_fft_length(h + kh - 1), _fft_length(w + kw - 1))
    dy, dx = _shift_index(kh, x.device), _shift_index(kw, x.device)
    # gram[c, ki, kj, c', ki', kj'] starts as the full correlation R_cc'(k' - k)
    full = _correlation_2d(x, lengths, (kh, kw))
    gram = full[:, :, dy[:, None, :, None], dx[None, :, None, :]].permute(0, 2, 3, 1, 4, 5)
    row_masks = torch.stack(_band_masks(kh, padding[0])).to(x.device, x.dtype)  # (2, kh, kh, bh, bh)
    col_masks = torch.stack(_band_masks(kw, padding[1])).to(x.device, x.dtype)
    # the bands are copied before they are permuted: gathering a permuted view of x directly
    # walks all of x once per band row (1 ms vs 0.14 ms for a band of the 16x16 layer)
    if bh > 0:  # output rows outside the window: pairs of rows within one edge band
        corr = torch.stack([
            _correlation_1d(x[:, :, rows].contiguous().permute(3, 0, 1, 2).reshape(w, batch, channels * bh), kw)
            for rows in (slice(0, bh), slice(h - bh, h))
        ]).reshape(2, channels, bh, channels, bh, -1)[..., dx]  # (2, c, r, c', r', kj, kj')
        gram = gram - torch.einsum("nabrs,ncrdsjl->cajdbl", row_masks, corr)
    if bw > 0:  # output columns outside the window
        corr = torch.stack([
            _correlation_1d(x[..., cols].contiguous().permute(2, 0, 1, 3).reshape(h, batch, channels * bw), kh)
            for cols in (slice(0, bw), slice(w - bw, w))
        ]).reshape(2, channels, bw, channels, bw, -1)[..., dy]  # (2, c, q, c', q', ki, ki')
        gram = gram - torch.einsum("njlqt,ncqdtab->cajdbl", col_masks, corr)
    if bh > 0 and bw > 0:  # both outside: subtracted twice above; the corners' own Gram matrices
        pixels = torch.stack([
            x[:, :, rows, cols].reshape(batch, channels * bh * bw)
            for rows in (slice(0, bh), slice(h - bh, h)) for cols in (slice(0, bw), slice(w - bw, w))
        ])  # (4, B, C bh bw): corners (top, left), (top, right), (bottom, left), (bottom, right)
        corners = (pixels.mT @ pixels).reshape(2, 2, channels, bh, bw, channels, bh, bw)
        gram = gram + torch.einsum("nabrs,mjlqt,nmcrqdst->cajdbl", row_masks, col_masks, corners)
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
