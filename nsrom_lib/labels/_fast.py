"""The fast path of the POM pseudo labels: BE + POM + the 1% rule in shared uint8 passes.

Opt-in only: ``_fast.pseudo_labels`` takes the same arguments and returns the same labels,
bit for bit, as ``pseudo_labels`` (pom.py), which is the version to read. Its batch
arithmetic is written for CPU speed, not for reading: integer codes instead of float
scores, int64 words over rows of uint8 lanes, numpy row gathers, scratch buffers, and a
few small host copies (so on a GPU the readable version is the one to use). Inputs it
does not cover (OA-CAMs that neither span 0..255 nor are constant, thresholds the codes
cannot express, empty images) go to the readable version.

Glossary of the names used below:

- B, C, H, W: batch size, classes, image size; N = H * W pixels per image.
- pair: a listed (image, class); P pairs in a batch. b, c, r: a pair's image (batch
  order), class id and sorted image. lab: a pair's label value c + 1.
- lay (_Layout): the pairs slot-major over the images sorted by class count, most first:
  slot j holds the j-th listed class of the first rows[j] sorted images, pairs
  starts[j] .. starts[j] + rows[j] (block(j)); na: the images listing a class (rows[0]);
  order / inverse: sorted position <-> batch position (None when already sorted).
- code: a raw value v of a full-range OA-CAM (min 0, max 255): its float32 score is the
  float32 nearest to v / 255, so BE's comparisons are comparisons of codes (_BECodes):
  z, the highest code floored to 0 by fg; t_cf, t_att: the first codes above conflict /
  att; s_cf: the highest saliency whose background score is above conflict; t_bg: the
  first saliency >= bg; V(sal): the highest class code that does not beat the background.
- m1, m2: the highest and second highest class code of a pixel.
- L: segment length (16..64 px, a divisor of N); Q = N // L segments per image; S: the
  segments with some saliency ("active"), the only ones the full BE pass reads.
- pot: POM's potential objects (0/1 uint8); cam_at: the CAM value of the winning class.
- ws (_Workspace): scratch tensors reused from call to call inside ``scratch_memory()``.
- rows of "words": (R, L) uint8 or int16 tensors seen as int64 words of 8 or 4 lanes, so
  that a per-row constant is one add per word (_words, _rows_affine, _add_rows_).

The speed of each trick was measured with `nsrom bench labels` (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from nsrom_lib.labels import pom as _readable
from nsrom_lib.labels._common import (
    IGNORE,
    _check_present,
    _check_same_hw,
    _check_u8_tensor,
    _min_valid_count,
)
from nsrom_lib.params import BE, POM, RULE

__all__ = ["pseudo_labels", "scratch_memory"]

_active = threading.local()


@contextlib.contextmanager
def scratch_memory() -> Iterator[None]:
    """Keep the fast path's scratch buffers from call to call inside the block; free them on exit.

    Outside such a block every call gets its own buffers, freed when it returns. Nested
    blocks share the outermost one's buffers.
    """
    if getattr(_active, "by_device", None) is not None:
        yield
        return
    _active.by_device = {}
    try:
        yield
    finally:
        _active.by_device = None


def _workspace(device: torch.device) -> _Workspace:
    """The scratch buffers for `device`: the open scratch_memory block's, else new ones."""
    by_device = getattr(_active, "by_device", None)
    if by_device is None:
        return _Workspace(device)
    ws = by_device.get(device)
    if ws is None:
        ws = by_device[device] = _Workspace(device)
    return ws


# ----------------------------------------------------------------------------------------
# Thresholds as integers
# ----------------------------------------------------------------------------------------


def _sal_scores_lut() -> np.ndarray:
    """(256,) float32: the background score 1 - sal / 255 for every 8-bit value.

    Computed with numpy's float32 arithmetic, exactly as the reference computes it on
    a float32 saliency map, so the batched version can look the scores up.
    """
    sal = np.arange(256, dtype=np.float32)
    return (1 - sal / np.float32(255)).astype(np.float32)


def _u8_first_at_least(threshold: float) -> int:
    """The smallest uint8 v with v >= threshold as numpy compares them (256 if none)."""
    if math.isnan(threshold) or threshold > 255:
        return 256
    if threshold <= 0:
        return 0
    return math.ceil(threshold)


# ----------------------------------------------------------------------------------------
# Scratch memory and the layout of the listed pairs
# ----------------------------------------------------------------------------------------


#: Most bytes of scratch tensors kept per thread and device (see _Workspace).
WORKSPACE_MAX_BYTES = 512 * 2**20


class _Workspace:
    """Scratch tensors kept from call to call, by name (on the CPU).

    The batched functions make a few dozen passes over (B, H * W) uint8 tensors. A fresh CPU
    tensor of that size is fresh memory from the OS on most calls (glibc maps large blocks
    and returns them on free), and first-touch page faults then cost more than the
    arithmetic: half the time of `nsrom bench labels` on the 2-core build machine (55k faults
    for 2000 images of 96 x 96, measured with getrusage). So the scratch tensors of a call
    are views into buffers that, inside a scratch_memory() block, the thread keeps per device
    and reuses; a function's result is always a new tensor. At most WORKSPACE_MAX_BYTES are kept (larger requests get plain
    tensors). Other devices have a caching allocator: there, get() just allocates.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.nbytes = 0

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.uint8):
        """A (shape) dtype tensor that no other live scratch tensor of this call shares."""
        if self.device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=self.device)
        numel = math.prod(shape)
        buf = self.bufs.get((name, dtype))
        if buf is None or buf.numel() < numel:
            old = 0 if buf is None else buf.numel() * buf.element_size()
            new = numel * torch.empty((), dtype=dtype).element_size()
            if self.nbytes - old + new > WORKSPACE_MAX_BYTES:
                return torch.empty(shape, dtype=dtype, device=self.device)
            with torch.inference_mode(False):  # usable in and outside inference mode
                buf = torch.empty(numel, dtype=dtype, device=self.device)
            self.bufs[(name, dtype)] = buf
            self.nbytes += new - old
        return buf[:numel].view(shape)


class _Layout(NamedTuple):
    """A batch's listed (image, class) pairs, slot-major, over images sorted by class count.

    The images are sorted by their number k of listed classes, most first (``order``: the
    original index of each sorted image, None when the batch is sorted already), so that the
    images listing more than j classes are the first ``rows[j]`` sorted images. Per-pair tensors
    (P, ...) hold slot 0 (the first listed class, by class id) of every image that has one, then
    slot 1, and so on: block j is pairs ``starts[j] : starts[j] + rows[j]``, the j-th class of
    sorted images 0 .. rows[j] - 1 in order. Per-pixel work is then one pass per slot over a
    prefix of (n, N) tensors, whatever the mix of class counts in the batch.
    """

    order: torch.Tensor | None  # (B,) int64
    inverse: torch.Tensor | None  # (B,) int64: the sorted position of each image
    rows: tuple[int, ...]  # (kmax,)
    starts: tuple[int, ...]  # (kmax,)
    b: torch.Tensor  # (P,) original image of each pair
    c: torch.Tensor  # (P,) class id
    r: torch.Tensor  # (P,) sorted image
    lab: torch.Tensor  # (P, 1) uint8: the label value c + 1

    def block(self, j: int) -> slice:
        return slice(self.starts[j], self.starts[j] + self.rows[j])

    @property
    def na(self) -> int:
        """The images that list at least one class: the first na sorted images."""
        return self.rows[0] if self.rows else 0


def _layout(present: torch.Tensor) -> _Layout:
    """The slot-major layout of the listed pairs of present: (B, C) bool (see _Layout).

    Small integer work on (B, C): done with numpy (faster for arrays this small), then moved
    to present's device.
    """
    B, C = present.shape
    dev = present.device
    pres = present.cpu().numpy()
    k = pres.sum(axis=1)  # (B,)
    per_k = np.bincount(k, minlength=C + 1)
    kmax = int(np.flatnonzero(per_k).max()) if B else 0
    rows = tuple(int(per_k[j + 1 :].sum()) for j in range(kmax))
    starts = tuple(sum(rows[:j]) for j in range(kmax))
    order = None
    if B > 1 and (k[1:] > k[:-1]).any():
        order = np.argsort(-k, kind="stable")
        pres, k = pres[order], k[order]
    r, c = np.nonzero(pres)  # (P,) by image, then class id
    slot = np.arange(r.size) - (np.cumsum(k) - k)[r]  # (P,) j-th class of r
    o = np.argsort(slot * max(B, 1) + r, kind="stable")  # slot-major
    r, c = r[o], c[o]
    b = r if order is None else order[r]
    inverse = None if order is None else np.argsort(order)

    def t(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).long().to(dev)

    lab = torch.from_numpy((c + 1).astype(np.uint8)).to(dev)[:, None]
    return _Layout(t(order), t(inverse), rows, starts, t(b), t(c), t(r), lab)


# ----------------------------------------------------------------------------------------
# uint8 comparisons and per-row constants on int64 words
# ----------------------------------------------------------------------------------------


def _ge01(x: torch.Tensor, t: int, out: torch.Tensor) -> torch.Tensor:
    """x >= t as 0/1 uint8 written to out (may be x), for uint8 x and any integer t.

    A comparison written to a uint8 out is one vectorised pass; written to a bool tensor it
    is twenty times slower when one side is a scalar or a broadcast column, and a scalar
    loop otherwise (torch 2.x CPU), so every comparison here goes to uint8.
    """
    if t <= 0:
        return out.fill_(1)
    if t > 255:
        return out.zero_()
    return torch.ge(x, t, out=out)


def _words_ok(*xs: torch.Tensor) -> bool:
    """Whether (R, L) tensors can be seen as (R, L * size / 8) int64 words (row per row)."""
    return all(
        x.dim() == 2
        and x.is_contiguous()
        and (x.shape[1] * x.element_size()) % 8 == 0
        and x.data_ptr() % 8 == 0
        for x in xs
    )


def _lane_ones(size: int) -> int:
    """The int64 word with 1 in each lane of `size` bytes: 0x0101..01 (uint8), 0x0001..0001
    (int16). A value v below the lane's sign bit times it is v in every lane."""
    return sum(1 << (8 * size * i) for i in range(8 // size))


def _words(col: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, 1) values -> (R, 1) int64 words holding the value in each of their dtype lanes
    (uint8 or int16 lanes: 0x0101.. or 0x0001.. times the value, which stays below 2**63 for
    values below 128 or 2**15; otherwise the lanes are copied)."""
    size = torch.empty((), dtype=dtype).element_size()
    v = col.reshape(-1, 1).to(torch.int64)
    if v.numel() == 0 or int(v.max()) < 2 ** (8 * size - 1):
        return v * _lane_ones(size)
    lanes = 8 // size
    out = torch.empty((v.shape[0], lanes), dtype=dtype, device=col.device)
    return out.copy_(col.reshape(-1, 1).expand(-1, lanes)).view(torch.int64)


def _rows_affine(
    x: torch.Tensor, d: torch.Tensor, base: torch.Tensor | None, out: torch.Tensor, small: bool
) -> torch.Tensor:
    """out = base + x * d for (R, L) uint8 x in 0..1 and one uint8 d and base per row ((R, 1)).

    A per-row broadcast over short uint8 rows is slow (five times slower than a plain pass
    for rows of 32 bytes); with small (every d and result below 128, so that no lane carries
    into the next or into the sign bit), rows of a multiple of 8 bytes run on int64 words of
    8 lanes instead."""
    R = x.shape[0]
    if small and _words_ok(x, out):
        x64, d64 = x.view(torch.int64), d.to(torch.int64).view(R, 1)
        if base is None:
            torch.mul(x64, d64, out=out.view(torch.int64))
        else:
            torch.addcmul(_words(base, torch.uint8), x64, d64, out=out.view(torch.int64))
        return out
    if base is None:
        return torch.mul(x, d, out=out)
    return torch.addcmul(base, x, d, out=out)


def _add_rows_(x: torch.Tensor, col: torch.Tensor | np.ndarray) -> torch.Tensor:
    """x += col, one value per row ((R, 1)), in place, for (R, L) uint8 or int16 x whose
    lanes stay below 128 (uint8) or 2**15 (int16): on int64 words where possible. col may be
    a numpy int array (the words are then made in numpy)."""
    if isinstance(col, np.ndarray):
        v = col.reshape(-1, 1).astype(np.int64)
        bits = 8 * x.element_size()
        if _words_ok(x) and (v.size == 0 or (v.min() >= 0 and v.max() < 2 ** (bits - 1))):
            x.view(torch.int64).add_(
                torch.from_numpy(v * _lane_ones(x.element_size())).to(x.device)
            )
            return x
        col = torch.from_numpy(v).to(x.device)
    if _words_ok(x):
        x.view(torch.int64).add_(_words(col, x.dtype))
        return x
    return x.add_(col.to(x.dtype))


def _pair_rows(maps: torch.Tensor, lay: _Layout, ws: _Workspace, name: str) -> torch.Tensor:
    """maps[b, c] of the layout's pairs as a (P, H * W) scratch tensor. maps: (B, C, H, W)."""
    B, C, H, W = maps.shape
    idx = lay.b * C + lay.c
    out = ws.get(name, (idx.numel(), H * W))
    return torch.index_select(maps.reshape(B * C, H * W), 0, idx, out=out)


# ----------------------------------------------------------------------------------------
# BE on integer codes
# ----------------------------------------------------------------------------------------


class _BECodes(NamedTuple):
    """BE's thresholds as integer codes, for maps whose raw values are their codes (min 0, max 255).

    A listed OA-CAM with min 0 and max 255 has a_c = v / (255 + 1e-8) at raw value v, and its
    float32 score is the float32 nearest to v / 255; every score is a function of v, increasing,
    and distinct values of v / 255 and (255 - sal) / 255 never round to the same float32 unless
    they are equal. So BE's comparisons between channels are comparisons of integer codes:
    the class code v, and for the background the code V(sal) below. (A constant map has a_c = 0
    everywhere: code 0.) See _be_codes for how each field is derived and checked.
    """

    all_conflict: bool  # 0 > conflict (float32): every channel counts, all pixels are 255
    z: int  # class codes 0..z score 0 after the fg floor (z >= 0)
    t_cf: int  # a class scores above conflict <=> code >= t_cf (256: never)
    s_cf: int  # the background scores above conflict <=> sal <= s_cf (-1: never)
    t_att: int  # a class's float64 a_c > att <=> code >= t_att (0: always, 256: never)
    t_bg: int  # sal >= bg <=> sal >= t_bg (256: never)
    v_table: np.ndarray  # (256,) uint8: V(sal), the highest class code that does not beat sal
    v_formula: bool  # V(sal) equals _v_codes's uint8 arithmetic (else looked up in v_table)
    v_cap: int = -1  # K: V(sal) = _v_short_np(sal, K), the shorter arithmetic (-1: not so)


def _v_formula_np(sal: np.ndarray, z: int) -> np.ndarray:
    """numpy twin of _v_codes's arithmetic, to check it against the exact table."""
    s = np.minimum(sal, 254)
    e0 = ((s >> 6) + (s & 1) + 2) >> 2
    return np.maximum(255 - s - e0, z)


def _v_short_np(sal: np.ndarray, cap: int) -> np.ndarray:
    """numpy twin of _v_codes's short arithmetic: 255 - v - e0(v), v = min(sal, cap).

    e0(v) = (v + 64 * (v & 1)) >> 7 is 1 for v >= 128 and for odd v >= 65 (as _v_codes's
    e0), in uint8 without overflow for v <= 191. Capping sal at the K where the formula
    reaches the floor code z replaces the final clamp to z.
    """
    v = np.minimum(sal, cap)
    return 255 - v - ((v + 64 * (v & 1)) >> 7)


def _v_cap(v_table: np.ndarray) -> int:
    """The largest K <= 191 with _v_short_np(sal, K) == v_table for every sal, or -1."""
    code = np.arange(256)
    for cap in range(191, -1, -1):
        if (_v_short_np(code, cap) == v_table).all():
            return cap
    return -1


@functools.lru_cache(maxsize=64)
def _be_codes(fg: float, conflict: float, bg: float, att: float) -> _BECodes | None:
    """The integer codes of BE's thresholds (see _BECodes), or None where an assumption fails.

    Everything is computed with numpy from the same float32 / float64 values the reference
    compares (docs/method.md §3), for all 256 raw values, and the monotonicity the uint8 path
    relies on is checked here rather than assumed.
    """
    fg32, cf32 = np.float32(fg), np.float32(conflict)
    code = np.arange(256)
    a = code / (255 + 1e-8)  # §3: float64 a_c of raw value v of a map with min 0 and max 255
    fc = a.astype(np.float32)  # §3.1: the class score, float32
    fc[fc < fg32] = 0  # §3.2: floor
    f0 = _sal_scores_lut()  # §3.1: the background score 1 - sal / 255, float32
    f0[f0 < fg32] = 0  # §3.2
    z = int((fc == 0).sum()) - 1
    if not ((fc[: z + 1] == 0).all() and (np.diff(fc[z:]) > 0).all() and (np.diff(f0) <= 0).all()):
        return None
    # §3.4: class code v beats the background at sal <=> fc[v] > f0[sal] <=> v > V(sal)
    v_table = (fc[None, :] <= f0[:, None]).sum(axis=1) - 1  # (256,) >= 0: fc[0] = 0
    # §3.3 / §3.5: each threshold as a suffix of codes or a prefix of saliency values
    hi, bg_hi, above_att = fc > cf32, f0 > cf32, a > att
    t_cf, s_cf, t_att = 256 - int(hi.sum()), int(bg_hi.sum()) - 1, 256 - int(above_att.sum())
    if not (
        (hi == (code >= t_cf)).all()
        and (bg_hi == (code <= s_cf)).all()
        and (above_att == (code >= t_att)).all()
    ):
        return None
    return _BECodes(
        all_conflict=bool(np.float32(0) > cf32),
        z=z,
        t_cf=t_cf,
        s_cf=s_cf,
        t_att=t_att,
        t_bg=_u8_first_at_least(bg),
        v_table=v_table.astype(np.uint8),
        v_formula=bool((_v_formula_np(code, z) == v_table).all()),
        v_cap=_v_cap(v_table),
    )


def _v_codes(s: torch.Tensor, th: _BECodes, ws: _Workspace) -> torch.Tensor:
    """V(sal) of _BECodes for every pixel: (n, N) uint8 -> (n, N) uint8 scratch.

    The background score 1 - sal / 255 (float32 arithmetic) is the float32 nearest to
    (255 - sal) / 255, except for odd sal in 65..127 and every sal in 128..254, where it is one
    float32 step below (e0 = 1: bit 7, or bits 6 and 0; checked against the table in
    _be_codes): there a class with the same code 255 - sal beats the background. So
    V = max(255 - sal - e0, z), with z from the floor; uint8 arithmetic, no lookup. Where the
    floor makes V = z from some sal K <= 191 on (fg about 0.25 and above: fg = 0.3 gives
    K = 178), the same in six passes instead of nine: 255 - v - e0(v), v = min(sal, K)
    (_v_short_np, checked against the table in _be_codes).
    """
    if th.v_cap >= 0:
        v = torch.clamp(s, max=th.v_cap, out=ws.get("v", tuple(s.shape)))
        e0 = torch.bitwise_and(v, 1, out=ws.get("e0", tuple(s.shape)))
        torch.add(v, e0, alpha=64, out=e0).bitwise_right_shift_(7)  # v + 64 <= 255: no wrap
        return v.add_(e0).bitwise_not_()  # 255 - v - e0
    if not th.v_formula:
        return torch.from_numpy(th.v_table).to(s.device)[s.long()]
    v = torch.clamp(s, max=254, out=ws.get("v", tuple(s.shape)))  # V(255) = V(254)
    e0 = torch.bitwise_right_shift(v, 6, out=ws.get("e0", tuple(s.shape)))  # bits 7, 6
    e0 += torch.bitwise_and(v, 1, out=ws.get("t0", tuple(s.shape)))  # + bit 0
    e0.add_(2).bitwise_right_shift_(2)  # 1 where >= 2: bit 7, or bits 6 and 0
    v.add_(e0).bitwise_not_()  # 255 - sal - e0 (sal + e0 <= 255)
    return v.clamp_min_(th.z) if th.z > 0 else v


def _full_range_pairs(lo, hi):
    """(P,) bool: maps whose raw values are their _BECodes codes: min 0 and max 255, or constant.
    lo, hi: (P,) each map's min and max, torch tensors or numpy arrays (the same operators)."""
    return ((lo == 0) & (hi == 255)) | (lo == hi)


class _BEPass(NamedTuple):
    """What the uint8 BE pass leaves for the images that list a class (scratch, (na, N) each)."""

    label: torch.Tensor  # uint8: the winning class's label, 0 where the background wins or conf
    win: torch.Tensor  # uint8 0/1: a class wins (§3.4) and no conflict (§3.3)
    conf: torch.Tensor | None  # uint8 0/1: two or more channels above conflict (§3.3)
    cause: torch.Tensor  # uint8 0/1: sal >= bg or a listed a_c > att (§3.5)
    cam_at: torch.Tensor | None  # uint8: the CAM of the winning class (where win), if asked


def _be_slots(
    oa: torch.Tensor,
    lay: _Layout,
    th: _BECodes,
    ws: _Workspace,
    m1: torch.Tensor,
    raw: torch.Tensor | None,
    cam: torch.Tensor | None,
    cam_at: torch.Tensor | None,
    small: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """_be_pass's loop over slots 1.. (slot 0 is in m1 already): keeps m1 (in place), raw (the
    highest raw code, if given) and cam_at (the winner's CAM, if given) up to date, and
    returns m2 (None: no conflict possible, or one class only) and lab (None: one class)."""
    na, N = m1.shape
    kmax, z = len(lay.rows), th.z
    conflicts = th.t_cf <= 255
    shape = (na, N)
    m2 = lab = None
    lab0 = lay.lab[lay.block(0)]  # (na, 1) label of slot 0
    for j in range(1, kmax):
        nj, blk = lay.rows[j], lay.block(j)
        e = oa[blk]  # (nj, N) raw codes of slot j
        if raw is not None:
            torch.maximum(raw[:nj], e, out=raw[:nj])
        if z > 0:
            e.clamp_min_(z)
        m1p = m1[:nj]
        gt = torch.gt(e, m1p, out=ws.get("gt", (nj, N)))  # 0/1 uint8 (see _ge01)
        if conflicts:
            if m2 is None:
                m2 = ws.get("m2", shape).zero_()  # one class only: no second
                torch.minimum(m1p, e, out=m2[:nj])
            else:
                m2p = m2[:nj]
                torch.maximum(m2p, torch.minimum(m1p, e, out=ws.get("t0", (nj, N))), out=m2p)
        torch.maximum(m1p, e, out=m1p)
        # the label of the best: += (label of slot j - label) where slot j wins (wraps: exact)
        if lab is None:  # slot 1 over slot 0: lab0 + gt * (lab1 - lab0), lab1 > lab0
            lab = ws.get("lab", shape)  # rows nj.. (one class): lab0, written with win below
            _rows_affine(gt, lay.lab[blk] - lab0[:nj], lab0[:nj], lab[:nj], small)
        else:
            labp = lab[:nj]
            labp.addcmul_(torch.sub(lay.lab[blk], labp, out=ws.get("t0", (nj, N))), gt)
        if cam is not None:
            cp = cam_at[:nj]
            if j == 1:  # cam of slot 0, or of slot 1 where it wins
                c0 = cam[lay.block(0)][:nj]
                torch.addcmul(c0, torch.sub(cam[blk], c0, out=ws.get("t0", (nj, N))), gt, out=cp)
            else:
                cp.addcmul_(torch.sub(cam[blk], cp, out=ws.get("t0", (nj, N))), gt)
    return m2, lab


def _be_pass(
    s: torch.Tensor,
    oa: torch.Tensor,
    lay: _Layout,
    th: _BECodes,
    ws: _Workspace,
    cam: torch.Tensor | None = None,
    att: bool = True,
) -> _BEPass:
    """BE (docs/method.md §3) on the uint8 code path, for the na sorted images that list a class.

    s: (na, N) uint8 sorted saliency; oa: (P, N) uint8 slot-major raw OA-CAMs whose maps
    span 0..255 or are 0 (constant maps zeroed), clamped here in place; cam: (P, N) raw CAMs
    to carry the winning class's CAM value along (for POM), or None. att=False leaves the
    att cause out of cause (the caller adds it).

    One uint8 pass per slot keeps the highest class code m1 (a tie keeps the earlier, lower
    class), its label and the second highest m2; then the background competes with its code
    V(sal), and the conflict and ignore rules are thresholds on codes. No lookup, no sort.
    """
    na, N = s.shape
    kmax, z = len(lay.rows), th.z
    conflicts = th.t_cf <= 255  # a class can score above conflict
    att_raw = 0 < th.t_att <= z  # att below the floor: needs the raw codes (rare)
    shape = (na, N)
    m2 = lab = raw = cam_at = None
    lab0 = lay.lab[lay.block(0)]  # (na, 1) label of slot 0
    small = bool(lay.lab.numel()) and int(lay.lab.max()) < 128  # label values below 128
    m1 = oa[lay.block(0)]  # (na, N), updated in place: block 0 is not read again
    if att_raw:
        raw = m1.clone()
    if z > 0:
        m1.clamp_min_(z)  # §3.2: every code that scores 0 after the floor ties at z
    if cam is not None:
        cam_at = ws.get("cam_at", shape)
        n1 = lay.rows[1] if kmax > 1 else 0  # rows below n1 are written with slot 1 below
        cam_at[n1:].copy_(cam[lay.block(0)][n1:])
    m2, lab = _be_slots(oa, lay, th, ws, m1, raw, cam, cam_at, small)
    # §3.3: two or more channels above conflict: the second highest of the classes' codes
    # and the background's (>= t_cf where it is above conflict, below t_cf elsewhere)
    conf = None
    if conflicts and th.s_cf >= 0:
        # the background is above conflict exactly where sal <= s_cf; the second highest of
        # all codes is then m1 (m2 <= m1), elsewhere m2: max(m1 * [sal <= s_cf], m2)
        b = torch.le(s, th.s_cf, out=ws.get("conf", shape)).mul_(m1)  # 0/1 uint8, then m1
        conf = b if m2 is None else torch.maximum(b, m2, out=b)
    elif conflicts and m2 is not None:
        conf = m2
    if conf is not None:
        _ge01(conf, th.t_cf, conf)  # 0/1
    # §3.4: argmax with the background (channel 0 wins ties): a class wins where m1 > V(sal);
    # where two channels conflict the label is 255 whoever wins (§3.3), so win is 0 there:
    # label then holds exactly the class pixels (what POM counts)
    win = torch.gt(m1, _v_codes(s, th, ws), out=ws.get("win", shape))  # (na, N) 0/1
    if conf is not None:
        torch.gt(win, conf, out=win)
    n1 = lay.rows[1] if kmax > 1 else 0  # images with two classes or more: lab holds theirs
    label = lab if lab is not None else ws.get("lab", shape)
    if n1:
        label[:n1].mul_(win[:n1])
    if n1 < na:  # one class: lab0 where it wins
        _rows_affine(win[n1:], lab0[n1:], None, label[n1:], small)
    # §3.5: the ignore causes of background pixels: sal >= bg, or a listed a_c > att
    cause = _ge01(s, th.t_bg, ws.get("cause", shape))
    if not att:
        pass
    elif th.t_att <= 0:
        cause.fill_(1)
    elif th.t_att <= 255:
        cause |= _ge01(raw if att_raw else m1, th.t_att, ws.get("t0", shape))
    return _BEPass(label, win, conf, cause, cam_at)


def _be_assemble(p: _BEPass, cause: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The label from a BE pass: 255 where two channels conflict, the class where one wins,
    255 where a cause hits a background pixel, else 0. cause: (na, N) 0/1 (p.cause, or with
    POM's potential objects added). Written to out and returned."""
    ignore = torch.gt(cause, p.win, out=cause)  # 0/1 uint8, in place
    if p.conf is not None:
        ignore |= p.conf
    # label | 255 * ignore as one add: the label is 0 wherever ignore is 1 (no class wins
    # there: win is 0, conflicts included)
    return torch.add(p.label, ignore, alpha=IGNORE, out=out)


# ----------------------------------------------------------------------------------------
# Segments, row gathers and histograms
# ----------------------------------------------------------------------------------------


def _pattern_row(N: int, m: int, device: torch.device) -> torch.Tensor:
    """(1, N) uint8: 0, 1, .., m - 1, 0, 1, .. (m in 1..256)."""
    return (torch.arange(N, device=device) % m).to(torch.uint8)[None]


@functools.lru_cache(maxsize=64)
def _segment_len(N: int) -> int:
    """The length L of the segments an image of N pixels is cut into (a divisor of N, 16..64
    pixels, as many factors of 2 as possible, then the shortest), or N if there is none.

    Shorter segments skip more saliency-free pixels but cost more per-row work: at 96 x 96,
    16 px measured about 2% faster than 32 and 8 px 4% slower than 16 (`nsrom bench labels`).
    """
    cands = [L for L in range(16, 65) if N % L == 0]
    if not cands:
        return N
    return max(cands, key=lambda L: (min(L & -L, 8), -L))


def _segments_any(x: torch.Tensor) -> torch.Tensor:
    """(R, L) uint8 -> (R,) bool: the rows with a non-zero byte.

    Through wide-int views: words of up to 8 bytes -> bool, and the bools of a row (2, 4 or
    8 of them) as one int -> bool; torch's reductions over short rows are twenty times slower.
    """
    R, L = x.shape
    x = x.contiguous()
    w = min(L & -L, 8)  # bytes per word: a power of 2 dividing L
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    y = x.view(ints[w]).bool()  # (R, L / w)
    while y.shape[1] > 1:
        n = y.shape[1]
        if n in ints:
            return y.view(ints[n]).view(R).bool()
        h = n // 2  # a halving step, for word counts that are not a power of 2
        z = y[:, :h] | y[:, h : 2 * h]
        if n % 2:
            z[:, :1] |= y[:, 2 * h :]
        y = z
    return y[:, 0]


def _take_rows(
    src: torch.Tensor, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """src[index] for (R, L) rows -> (len(index), L), into out if given, else a new tensor.

    On the CPU numpy's take with each row seen as one opaque item of L bytes (np.void): two
    to three times faster than torch's index_select on rows of a few dozen bytes, which
    copies them element by element (mode="clip" writes into out unbuffered; every index
    here is in range). index: (k,) int64, numpy or a tensor on src's device.
    """
    R, L = src.shape
    k = len(index)
    cpu = src.device.type == "cpu" and src.is_contiguous() and L > 0
    if cpu and (out is None or out.is_contiguous()):
        item = np.dtype((np.void, L * src.element_size()))
        idx = index if isinstance(index, np.ndarray) else index.numpy()
        rows = src.numpy().view(item).reshape(R)
        if out is None:
            got = np.take(rows, idx, mode="clip")  # (k,) items
            return torch.from_numpy(got.view(src.numpy().dtype).reshape(k, L))
        np.take(rows, idx, out=out.numpy().view(item).reshape(k), mode="clip")
        return out
    if isinstance(index, np.ndarray):
        index = torch.from_numpy(index).to(src.device)
    return torch.index_select(src, 0, index, out=out) if out is not None else src[index]


def _put_rows(dst: torch.Tensor, index: np.ndarray, src: torch.Tensor) -> torch.Tensor:
    """dst[index] = src for (R, L) rows (index: (k,) int64 numpy, distinct, in range; src:
    (k, L)), in place. On the CPU numpy's fancy assignment of opaque L-byte items (as in
    _take_rows); elsewhere index_copy_."""
    R, L = dst.shape
    k = len(index)
    if dst.device.type == "cpu" and dst.is_contiguous() and src.is_contiguous() and L > 0:
        item = np.dtype((np.void, L * dst.element_size()))
        dst.numpy().view(item).reshape(R)[index] = src.numpy().view(item).reshape(k)
        return dst
    return dst.index_copy_(0, torch.from_numpy(index).to(dst.device), src)


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """(n,) bool -> the int64 indices of its True entries (numpy's on the CPU: ten times faster)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero()[:, 0]


def _chunked_bincount(bins: torch.Tensor, key: np.ndarray, n: int, per: int, nbins: int):
    """Counts of (R, L) int16 bins whose rows are sorted by key (R,) numpy int in 0..n-1 and
    offset by (key % per) * nbins: one bincount per chunk of per keys -> (n * nbins,) int64."""
    ends = np.searchsorted(key, np.arange(0, n + per, per)).tolist()
    return torch.cat(
        [
            torch.bincount(bins[r0:r1].reshape(-1), minlength=min(per, n - i) * nbins)
            for i, r0, r1 in zip(range(0, n, per), ends, ends[1:], strict=False)
        ]
    )


def _class_counts(
    g: torch.Tensor, val: torch.Tensor, img: np.ndarray, na: int, K1: int, ws: _Workspace
) -> torch.Tensor:
    """Histograms of val by (image, group): (na * K1, 256) int64, row i * K1 + q.

    g, val: (S, L) uint8 segments of images img: (S,) int64 numpy, sorted; g in 0..K1-1, 0 = no
    group. Only pieces of 8 pixels with a grouped pixel are counted (about 0.6x the pixels of
    the segments with one, on the benchmark). With longer rows (L not a multiple of 8), the
    values of group 0 are spread over its bins (xor with a position pattern): bincount slows
    down about 2x on the long runs of one bin they would form (store/load aliasing); in
    pieces of 8 pixels the runs are short, and spreading them cost more than it saved (2%
    of `nsrom bench labels`). int16 bins, one bincount per chunk of images.
    """
    S, L = g.shape
    w = 8 if L % 8 == 0 and g.is_contiguous() and val.is_contiguous() else L
    if w < L:  # pieces of 8 pixels: one int64 word each
        g, val = g.view(S * (L // w), w), val.view(S * (L // w), w)
        S, rep, L = S * (L // w), L // w, w
    else:
        rep = 1
    hit = _nonzero(_segments_any(g))
    S2 = hit.numel()
    if S2 < S:
        g = _take_rows(g, hit, ws.get("h0", (S2, L)))
        val = _take_rows(val, hit, ws.get("h1", (S2, L)))
        h = hit.cpu().numpy()
        img = img[h >> (rep.bit_length() - 1) if rep & (rep - 1) == 0 else h // rep]
    else:
        g = ws.get("h0", (S, L)).copy_(g)
        val = ws.get("h1", (S, L)).copy_(val)
        img = np.repeat(img, rep)
    per = 128 // K1  # images per bincount: bins < 2**15
    words = L == 8 and _words_ok(g, val)  # one int64 word per piece
    if not words:
        rest = torch.eq(g, 0, out=ws.get("h2", (S2, L)))  # 0/1 uint8 (see _ge01)
        val ^= rest.mul_(_pattern_row(L, 256, g.device))
    if per >= 1:
        off = (np.arange(na) % per) * K1  # (na,) each image's group offset, <= 127 - (K1 - 1)
        if words:  # per-row constants as whole words: no broadcast over short rows
            words_off = off * _lane_ones(1)  # (na,) the offset in each uint8 lane
            g.view(torch.int64).add_(torch.from_numpy(words_off[img]).to(g.device)[:, None])
        else:
            _add_rows_(g, off[img])  # <= 127
        # (g + offset) * 256 + val <= 127 * 256 + 255: int16; val widened, then one add of
        # the uint8 g (two passes instead of four)
        bins = ws.get("bins", (S2, L), torch.int16).copy_(val)
        torch.add(bins, g, alpha=256, out=bins)
        return _chunked_bincount(bins, img, na, per, K1 * 256).view(na * K1, 256)
    bins = ws.get("bins", (S2, L), torch.int32).copy_(g)  # many classes: int32, one call
    bins += torch.from_numpy((img * K1).astype(np.int32)).to(g.device)[:, None]
    bins.bitwise_left_shift_(8).bitwise_or_(val)
    return torch.bincount(bins.view(-1), minlength=na * K1 * 256).view(na * K1, 256)


# ----------------------------------------------------------------------------------------
# POM's thresholds from histograms (numpy on the host: a few hundred pairs)
# ----------------------------------------------------------------------------------------


def _norm_value(p: np.ndarray, d: np.ndarray) -> np.ndarray:
    """p / (d + 1e-8) in float64, the normalised value (docs/method.md §3) of raw value min + p
    of a map with max - min = d, computed as normalize_map_ref computes it. p, d: int64."""
    return p / (d + 1e-8)


def _flat_cum(counts: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rows histograms of 256 bins laid end to end and cumulated across rows (_median_flat).

    counts: (rows * 256,) or (rows, 256) int64. Returns flat: (rows * 256,) the cumulative sum
    (row r's count of raw values <= v is flat[r * 256 + v] - start[r]); start: (rows,) the
    counts of the rows before each row; total: (rows,) each row's count.
    """
    flat = np.cumsum(counts.ravel())
    row0 = np.arange(rows) * 256
    start = np.zeros(rows, np.int64)
    start[1:] = flat[row0[1:] - 1]
    return flat, start, flat[row0 + 255] - start


def _median_flat(
    flat: np.ndarray,
    start: np.ndarray,
    base: np.ndarray,
    n: np.ndarray,
    lo: np.ndarray,
    d: np.ndarray,
) -> np.ndarray:
    """_median_of_cum on P histograms of 256 bins laid end to end, cumulated across rows.

    flat: (P * 256,) int64, the cumulative sum of the (P, 256) counts raveled (so each row's
    cumulative counts are flat[row] - start, no pass to separate the rows); start: (P,) the
    counts before each row (flat at the end of the previous row). base, n, lo, d: (P,) as in
    _median_of_cum; ranks must stay below the row's total (n == 0 rows give NaN).
    """
    P = start.size
    s0 = start + base
    k = np.concatenate((s0 + (n - 1) // 2, s0 + n // 2))  # (2 P,) the two middle ranks
    # the raw value holding each rank: the first bin whose cumulative count exceeds it; one
    # searchsorted over all rows (flat is non-decreasing and every rank < its row's total)
    b = np.searchsorted(flat, k, side="right")  # (2 P,) flat positions
    first = np.arange(P) * 256 + lo  # (P,) the flat position of each row's min
    v = _norm_value(b - np.concatenate((first, first)), np.concatenate((d, d)))  # (2 P,)
    med = (v[:P] + v[P:]) / 2
    med[n == 0] = np.nan
    return med


def _first_above(lo: np.ndarray, d: np.ndarray, x: np.ndarray | float) -> np.ndarray:
    """The smallest raw value >= lo whose normalised value is strictly above x (256 if none).

    lo, d: (P,) int64 each map's min and max - min; x: (P,) float64 or a number (NaN: none).
    Returns (P,) int64. floor(x * (d + 1e-8)) is within one of the answer's p - 1; the
    candidates are then checked with the exact values (_norm_value).
    """
    # whole numbers in float64 throughout (exact), NaN carried along to the end: few numpy
    # calls (they cost more than their arithmetic on a few hundred pairs)
    dd = d + 1e-8
    x = np.asarray(x, dtype=np.float64)
    q = np.floor(x * dd)
    np.clip(q, 0, 256, out=q)
    first = q + (q / dd <= x) + ((q + 1) / dd <= x)  # _norm_value(q, d) <= x, ...
    first += lo
    np.fmin(first, 256, out=first)  # fmin: 256 where first is NaN (x NaN: none above)
    return first.astype(np.int64)


def _pom_from_counts(
    counts_in: torch.Tensor, cam: torch.Tensor, pom: float, L: int, ws: _Workspace
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """T_c (docs/method.md §4) of every pair from its class pixels' histogram.

    counts_in: (P, 256) int64 counts by raw CAM value on the pixels labelled with the pair's
    class; cam: (P, N) uint8 the pairs' raw CAMs (for the TQ branch, in segments of L). Returns
    t: (P,) float64 (NaN selects nothing) and below: (P, 1) uint8, the raw threshold: CAM > T_c
    <=> raw value > below, both on cam's device, and n_in: (P,) int64 numpy, the pair's class
    pixels. Normalisation is monotonic, so every median only needs counts by raw value.
    """
    P, N = cam.shape
    dev = cam.device
    lo_t = cam.amin(dim=1)  # (P,)
    lo = lo_t.cpu().numpy().astype(np.int64)
    d = cam.amax(dim=1).cpu().numpy().astype(np.int64) - lo
    # cumulative counts, the rows laid end to end (_flat_cum, _median_flat)
    flat, start, n_in = _flat_cum(counts_in.cpu().numpy(), P)
    # §4 MED: non-zero CAM sum on the class's pixels <=> one of them is above the map's min
    has_inside = n_in > flat[np.arange(P) * 256 + lo] - start
    t = _median_flat(flat, start, np.zeros_like(n_in), n_in, lo, d)
    rest = np.flatnonzero(~has_inside)  # (R,)
    if rest.size:
        # §4 TQ: m = median of the values > pom; T = median of the values strictly above m;
        # T = 1 if no value is above pom. Only raw values >= a (values > pom) matter: the
        # histogram skips the segments without one and spreads the smaller values over
        # the bins below a (a position pattern, see _class_counts)
        R, Q = rest.size, N // L
        lo_r, d_r = lo[rest], d[rest]
        a = _first_above(lo_r, d_r, pom)  # (R,)
        rest_t = torch.from_numpy(rest).to(dev)
        x = torch.index_select(cam, 0, rest_t, out=ws.get("tq_x", (R, N)))
        seg_pair = np.repeat(np.arange(R), Q)  # (R * Q,) numpy
        if a.min() > 0:
            a1 = torch.from_numpy(np.minimum(a - 1, 255).astype(np.uint8)).to(dev)[:, None]
            y = torch.gt(x, a1, out=ws.get("tq_y", (R, N)))  # 0/1 uint8: x >= a
            hit = _nonzero(_segments_any(y.view(R * Q, L)))
            x = _take_rows(x.view(R * Q, L), hit, ws.get("tq_y", (hit.numel(), L)))
            seg_pair = seg_pair[hit.cpu().numpy()]
            m_pat = min(int(a.min()), 256)
            if m_pat > 1:
                torch.maximum(x, _pattern_row(L, m_pat, dev), out=x)
        else:
            x = x.view(R * Q, L)
        bins = ws.get("tq_bins", tuple(x.shape), torch.int16).copy_(x)
        _add_rows_(bins, seg_pair % 128 * 256)  # <= 2**15 - 1
        h = _chunked_bincount(bins, seg_pair, R, 128, 256).cpu().numpy()  # (R * 256,)
        # counts of raw values <= v, exact for v >= a - 1 (the skipped pixels are all < a):
        # flat_r[r * 256 + v] - start_r[r], the skipped pixels counted in start_r
        flat_r, start_r, counted = _flat_cum(h, R)
        start_r -= N - counted
        r0 = np.arange(R) * 256

        def count_below(v: np.ndarray) -> np.ndarray:
            """(R,) counts of raw values < v, for v in a..256 (0 for v == 0)."""
            return np.where(v > 0, flat_r[r0 + np.maximum(v - 1, 0)] - start_r, 0)

        base = count_below(np.minimum(a, 256))
        m = _median_flat(flat_r, start_r, base, N - base, lo_r, d_r)
        base_m = count_below(_first_above(lo_r, d_r, m))
        t_tq = _median_flat(flat_r, start_r, base_m, N - base_m, lo_r, d_r)
        t[rest] = np.where(base < N, t_tq, 1.0)
    # CAM > T_c <=> raw value >= first <=> raw value > first - 1; first >= lo + 1 since
    # T_c >= 0 (or NaN: first = 256, nothing)
    below = np.clip(_first_above(lo, d, t) - 1, 0, 255).astype(np.uint8)
    return torch.from_numpy(t).to(dev), torch.from_numpy(below).to(dev)[:, None], n_in


def _listed_np(n_in: np.ndarray, lay: _Layout) -> np.ndarray:
    """_listed as a numpy (na,) int64 array. A weighted bincount sums in float64: exact, the
    sums being at most a few pixel counts (far below 2**53)."""
    r = lay.r.cpu().numpy()
    return np.bincount(r, weights=n_in, minlength=lay.na).astype(np.int64)


def _potential(
    cam: torch.Tensor,
    lay: _Layout,
    below: torch.Tensor,
    ws: _Workspace,
    acc: torch.Tensor | None = None,
) -> torch.Tensor:
    """(na, N) uint8 scratch, 1 where some listed class's CAM is above its T_c (§4), else 0;
    or'ed into acc (na, N) 0/1 if given."""
    for j in range(len(lay.rows)):
        nj, blk = lay.rows[j], lay.block(j)
        buf = ws.get("pot" if acc is None else "t0", (nj, cam.shape[1]))
        above = torch.gt(cam[blk], below[blk], out=buf)  # 0/1 uint8 (see _ge01)
        if acc is None:
            acc = above
        else:
            acc[:nj] |= above
    return acc


# ----------------------------------------------------------------------------------------
# BE + POM in shared passes, and the entry point
# ----------------------------------------------------------------------------------------


def _gather_active(
    sal_seg: torch.Tensor,
    oa: torch.Tensor,
    cam: torch.Tensor,
    lay: _Layout,
    th: _BECodes,
    ws: _Workspace,
    idx: torch.Tensor | None,
    order: np.ndarray | None,
    merged: bool,
    m1: torch.Tensor | None,
):
    """The active segments' rows for _pseudo_fused's BE pass, and m1 (see there).

    sal_seg: (n * Q, L) saliency segments, batch order; idx: (S,) the active segments of the
    sorted images (None: all). Returns lay_a (the layout of the gathered pair segments),
    s_a, oa_a, cam_a (their rows), img (S,) numpy (each segment's sorted image), seg_b (S,)
    numpy (its row in sal_seg) and m1 (na, N), the highest listed code of every pixel.
    """
    na, kmax, z = lay.na, len(lay.rows), th.z
    L = sal_seg.shape[1]
    Q = oa.shape[1] // L
    dev = sal_seg.device
    # i: (S,) the active segments of the sorted images (all of them when idx is None); img:
    # their sorted image; seg_b: the same segments in the batch (same image, same place)
    i = np.arange(na * Q) if idx is None else idx.cpu().numpy()
    S = i.size
    # per image counts of active segments (i is sorted), then repeats: no (S,) division
    per_img = np.diff(np.searchsorted(i, np.arange(na + 1) * Q))  # (na,)
    img = np.repeat(np.arange(na), per_img)
    seg_b = i if order is None else i + np.repeat((order[:na] - np.arange(na)) * Q, per_img)
    s_a = _take_rows(sal_seg, seg_b, ws.get("s_a", (S, L)))
    if idx is None:
        rows = tuple(r * Q for r in lay.rows)
        oa_a, cam_a = oa.view(-1, L), cam.view(-1, L)
        lab_a = lay.lab.repeat_interleave(Q, dim=0)
    else:
        rows = tuple(np.searchsorted(i, np.asarray(lay.rows) * Q).tolist())  # of images < rows[j]
        gidx = np.concatenate([i[:rj] + lay.starts[j] * Q for j, rj in enumerate(rows)])
        pair = np.concatenate([img[:rj] + lay.starts[j] for j, rj in enumerate(rows)])
        oa_a = _take_rows(oa.view(-1, L), gidx, ws.get("oa_a", (len(gidx), L)))
        cam_a = _take_rows(cam.view(-1, L), gidx, ws.get("cam_a", (len(gidx), L)))
        lab_a = lay.lab.view(-1).index_select(0, torch.from_numpy(pair).to(dev))[:, None]
        # oa is not read again: m1, the highest listed code, in place in its first block (the
        # floor z only matters for thresholds at or below z: never t_att when merged)
        m1 = oa[lay.block(0)]
        for j in range(1, kmax):
            torch.maximum(m1[: lay.rows[j]], oa[lay.block(j)], out=m1[: lay.rows[j]])
        if not merged and z > 0:
            m1.clamp_min_(z)
    empty = lab_a.new_empty(0)
    starts = tuple(sum(rows[:j]) for j in range(kmax))
    lay_a = _Layout(None, None, rows, starts, empty, empty, empty, lab_a)
    return lay_a, s_a, oa_a, cam_a, img, seg_b, m1


def _pseudo_fused(
    sal: torch.Tensor,
    oa: torch.Tensor,
    cam: torch.Tensor,
    lay: _Layout,
    th: _BECodes,
    pom: float,
    C: int,
    ws: _Workspace,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """BE + POM on the uint8 code path, the stages sharing their passes, segment by segment.

    sal: (n, N) uint8 saliency in the batch's order; oa, cam: (P, N) uint8 slot-major raw
    maps, the OA-CAMs all full-range or zeroed constants (both overwritten). Returns src:
    (n * Q + S, L) uint8 scratch rows: the n sorted images' labels as Q segments of L pixels
    each, right except on the S active segments, whose labels follow; seg_b: (S,) int64 numpy,
    the place of each active segment in the batch (row of sal.view(n * Q, L)); and listed:
    (na,) int64 numpy, the pixels labelled with a listed class.

    Where an image segment has saliency 0 throughout, the background beats every class
    (V(0) = 255), so the label there only depends on the highest class code m1: 255 where
    m1 reaches conflict (the background is above it too) or att, else 0, and POM's potential
    objects. The full BE pass (_be_pass) runs on the other segments only, gathered into
    (S, L) rows, and carries the winning class's CAM value along for POM's histogram.
    """
    n, N = sal.shape
    na, kmax, z = lay.na, len(lay.rows), th.z
    L = _segment_len(N)
    Q = N // L
    sal_seg = sal.reshape(n * Q, L)
    # the index arithmetic on (S,) segment lists runs in numpy on the host: a few dozen
    # microseconds less per op than torch's on arrays of this size
    order = None if lay.order is None else lay.order.cpu().numpy()  # (n,)
    # the shortcut needs: the background above conflict at sal 0, no saliency cause at 0, att
    # on codes above the floor, a class code that can beat the background somewhere
    short = L < N and th.s_cf >= 0 and th.t_bg >= 1 and not 0 < th.t_att <= z and z < 255
    idx = None
    # at sal 0 the att cause and the conflict with the background need m1 >= t_att or t_cf;
    # with t_att <= t_cf the first is all of it, and it is the active pixels' att cause too:
    # computed once at full size, with POM's potential objects (below)
    merged = short and th.t_att <= min(th.t_cf, 255)
    m1 = None
    if short:
        act = _segments_any(sal_seg).view(n, Q)  # segments with some saliency
        if lay.order is not None:
            act = act.index_select(0, lay.order)
        idx = _nonzero(act[:na].reshape(-1))  # (S,) active segments of the sorted images
        if idx.numel() == na * Q:
            idx = None
            # the BE pass below works on oa itself: m1 first, in its own buffer
            m1 = torch.clamp(oa[lay.block(0)], min=z, out=ws.get("m1", (na, N)))
            for j in range(1, kmax):
                torch.maximum(m1[: lay.rows[j]], oa[lay.block(j)], out=m1[: lay.rows[j]])
    lay_a, s_a, oa_a, cam_a, img, seg_b, m1 = _gather_active(
        sal_seg, oa, cam, lay, th, ws, idx, order, merged, m1
    )
    S = len(seg_b)
    p = _be_pass(s_a, oa_a, lay_a, th, ws, cam=cam_a, att=not merged)
    # §4 on BE's label: the class pixels are those a class wins without a conflict (p.label)
    counts = _class_counts(p.label, p.cam_at, img, na, C + 1, ws)  # (na * (C + 1), 256)
    # (P, 256) each pair's rows, picked in numpy (P small rows: a fraction of torch's cost)
    rows_in = lay.r.cpu().numpy() * (C + 1) + lay.c.cpu().numpy() + 1
    counts_in = torch.from_numpy(counts.cpu().numpy()[rows_in])
    _, below, n_in = _pom_from_counts(counts_in, cam, pom, L, ws)
    listed = _listed_np(n_in, lay)
    acc = _ge01(m1, th.t_att, ws.get("pot", (na, N))) if merged else None
    pot = _potential(cam, lay, below, ws, acc)  # (na, N) 0/1: a potential object
    src = _fused_rows(sal, lay, th, ws, p, m1, pot, idx, S, merged, short)
    return src, seg_b, listed


def _fused_rows(sal, lay, th, ws, p, m1, pot, idx, S, merged, short) -> torch.Tensor:
    """_pseudo_fused's result rows: the sorted images' Q segments, then the S active ones."""
    n, N = sal.shape
    na, L = lay.na, _segment_len(N)
    Q = N // L
    src = ws.get("src", (n * Q + S, L))
    full = src[: n * Q].view(n, N)
    if merged:  # §3.3 / §3.5 at sal 0: 255 where m1 >= t_att; §4: or a potential object
        torch.mul(pot, IGNORE, out=full[:na])
    elif short:  # §3.3 / §3.5 at sal 0: 255 where m1 >= t_cf or t_att, or a potential object
        _ge01(m1, min(th.t_cf, th.t_att), full[:na]).bitwise_or_(pot).mul_(IGNORE)
    if na < n:  # images without a listed class: background, 255 where sal >= bg
        rest = sal[na:] if lay.order is None else sal.index_select(0, lay.order[na:])
        _ge01(rest, th.t_bg, full[na:]).mul_(IGNORE)
    pot_a = pot.view(-1, L)
    if idx is not None:
        pot_a = _take_rows(pot_a, idx, ws.get("t0", (S, L)))
    p.cause.bitwise_or_(pot_a)  # §4: potential objects become 255 as §3.5's causes do
    _be_assemble(p, p.cause, src[n * Q :])
    return src


def pseudo_labels(
    sal: torch.Tensor,
    oa_cam: torch.Tensor,
    cam: torch.Tensor,
    present: torch.Tensor,
    fg: float = BE.fg,
    conflict: float = BE.conflict,
    bg: float = BE.bg,
    att: float = BE.att,
    pom: float = POM.pom,
    ratio: float = RULE.ratio,
) -> torch.Tensor:
    """POM pseudo labels as pom.pseudo_labels (same arguments, same labels), faster on a CPU.

    On the uint8 code path (all listed OA-CAMs full-range or constant) the stages share
    their passes (_pseudo_fused); the 1% rule counts from POM's histogram (BE labels only
    listed classes, POM keeps them). Other inputs go to pom.pseudo_labels. Wrap a loop of
    calls in scratch_memory() to reuse the scratch buffers between them.
    """
    _check_u8_tensor("sal", sal, 3)
    _check_u8_tensor("oa_cam", oa_cam, 4)
    _check_u8_tensor("cam", cam, 4)
    B, C, H, W = oa_cam.shape
    _check_same_hw("sal", sal, B, H, W)
    _check_same_hw("cam", cam, B, H, W)
    _check_present(present, B, C)
    _check_present(present, B, cam.shape[1])
    N = H * W
    lay, ws = _layout(present), _workspace(sal.device)
    na = lay.na
    th = _be_codes(float(fg), float(conflict), float(bg), float(att))
    fused = th is not None and N > 0 and na > 0 and not (th.all_conflict and C >= 1)
    if fused:
        oa = _pair_rows(oa_cam, lay, ws, "oa")  # (P, N) raw OA-CAMs, slot-major
        # (P,) each map's min and max; the checks on them in numpy (a few hundred pairs:
        # numpy's small ops cost a fraction of torch's)
        lo, hi = oa.amin(dim=1).cpu().numpy(), oa.amax(dim=1).cpu().numpy()
        fused = bool(_full_range_pairs(lo, hi).all())
    if not fused:  # maps or thresholds the codes do not cover: the readable version
        return _readable.pseudo_labels(sal, oa_cam, cam, present, fg, conflict, bg, att, pom, ratio)
    flat = np.flatnonzero((lo == hi) & (lo != 0))
    if flat.size:  # a constant map normalises to 0 everywhere: code 0
        oa.index_fill_(0, torch.from_numpy(flat).to(oa.device), 0)
    cam_p = _pair_rows(cam, lay, ws, "cam")  # (P, N)
    src, seg_b, listed = _pseudo_fused(sal.reshape(B, N), oa, cam_p, lay, th, pom, C, ws)
    out = _assemble(src, seg_b, lay, B, N)
    # the 1% rule (sorted images; those without a listed class have no class pixel)
    n_min = _min_valid_count(N, ratio)
    few = np.flatnonzero(listed < n_min)
    if n_min > 0 and na < B:
        few = np.concatenate((few, np.arange(na, B)))
    if few.size:
        if lay.order is not None:
            few = lay.order.cpu().numpy()[few]
        out.index_fill_(0, torch.from_numpy(few).to(out.device), IGNORE)
    return out.view(B, H, W)


def _assemble(src: torch.Tensor, seg_b: np.ndarray, lay: _Layout, B: int, N: int) -> torch.Tensor:
    """The (B, N) labels in the batch's order from _pseudo_fused's rows, as a new tensor.

    The images in the batch's order as whole rows (N-byte items: copied at memcpy speed),
    then the S active segments put in their places: two to three times faster than taking
    all B * Q segments one by one.
    """
    Q = N // _segment_len(N)
    full = src[: B * Q].view(B, N)
    if lay.inverse is None:
        out = full.clone()  # a new tensor
    else:
        out = _take_rows(full, lay.inverse.cpu().numpy())
    _put_rows(out.view(B * Q, -1), seg_b, src[B * Q :])
    return out
