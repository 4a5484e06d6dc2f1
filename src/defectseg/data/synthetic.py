"""Embedded default data: a fast, seeded generator of DAGM-like defect images with exact pixel masks.

Ten procedural texture classes (`TEXTURES`), each with a fixed character like DAGM's classes, and five
defect kinds (`DEFECTS`: scratch, spot, crack, stain, missing thread). Each class has a preferred defect
kind (70 %), otherwise another kind is drawn. A defect changes the image only inside its mask, by at least
~60 % of a contrast of 45-85 gray levels against a texture whose spread is ~15-25 levels, so masks cover
exactly the changed pixels and defects are learnable from local contrast and shape. Defect extents range
from a few pixels up to ~1/6 of the image side.

`generate_sample(rng_or_seed, texture, size, defective)` -> (image uint8 (H,W), mask uint8 (H,W) 0/1).
`generate(n, size, defective_fraction, seed, classes)` -> [(image, mask, texture_name)]: sample i is drawn
from its own generator seeded by (seed, i), so it does not depend on n.
`write_dagm(out, ...)` writes a real DAGM 2007 folder (`Class<k>/{Train,Test}/<id>.PNG`,
`Label/Labels.txt`, `Label/<id>_label.PNG` with 0/255 masks).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from .io import write_png

TEXTURES = ("noise", "weave", "grating", "speckle", "gradient", "mottled", "brushed", "tiles", "fibers", "grain")
DEFECTS = ("scratch", "spot", "crack", "stain", "missing_thread")
# preferred defect kind per texture class (like DAGM: each class has its own defect type)
PREFERRED = ("spot", "missing_thread", "scratch", "stain", "crack", "spot", "scratch", "crack", "stain", "scratch")
# fixed per-class character: base gray level, orientation (degrees), period factor
_CLASS_BASE = (120, 130, 125, 110, 128, 135, 118, 126, 122, 132)
_CLASS_ANGLE = (0.0, 0.0, 30.0, 0.0, 60.0, 0.0, 15.0, 0.0, 0.0, 0.0)


def _rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian noise low-passed at `sigma` pixels, unit std (computed at low resolution when sigma is big)."""
    if sigma > 4:
        small = max(8, int(round(size * 2.0 / sigma)))
        n = rng.standard_normal((small, small)).astype(np.float32)
        n = cv2.GaussianBlur(n, (0, 0), 1.0)
        n = cv2.resize(n, (size, size), interpolation=cv2.INTER_CUBIC)
    else:
        n = rng.standard_normal((size, size)).astype(np.float32)
        if sigma > 0:
            n = cv2.GaussianBlur(n, (0, 0), sigma)
    return (n - n.mean()) / (n.std() + 1e-6)


def _coords(size: int, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    a = np.deg2rad(angle_deg)
    return x * np.cos(a) + y * np.sin(a), -x * np.sin(a) + y * np.cos(a)


# ---------------------------------------------------------------- textures (float32, ~[0, 255])
def _tex_noise(rng, s, k):
    return _CLASS_BASE[k] + 18 * _smooth_noise(rng, s, max(0.8, s / 340))


def _tex_weave(rng, s, k):
    p = max(4.0, s / 32) * rng.uniform(0.9, 1.1)
    u, v = _coords(s, rng.uniform(-3, 3))
    u, v = u + rng.uniform(0, p), v + rng.uniform(0, p)
    cell = ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)
    across = 0.5 + 0.5 * np.cos(2 * np.pi * v / p)  # thread profile across the thread
    along = 0.5 + 0.5 * np.cos(2 * np.pi * u / p)
    pattern = cell * across + (1 - cell) * along
    return _CLASS_BASE[k] - 20 + 40 * pattern + 5 * _smooth_noise(rng, s, 0.8)


def _tex_grating(rng, s, k):
    p = max(4.0, s / 24) * rng.uniform(0.9, 1.1)
    u, _ = _coords(s, _CLASS_ANGLE[k] + rng.uniform(-5, 5))
    return _CLASS_BASE[k] + 22 * np.sin(2 * np.pi * u / p + rng.uniform(0, 6.3)) + 6 * _smooth_noise(rng, s, 1)


def _tex_speckle(rng, s, k):
    dots = (rng.random((s, s)) < 0.03).astype(np.float32)
    dots = cv2.GaussianBlur(dots, (0, 0), max(0.7, s / 512))
    dots *= 1.0 / (dots.max() + 1e-6)
    return _CLASS_BASE[k] + 45 * dots - 8 + 6 * _smooth_noise(rng, s, 0.7)


def _tex_gradient(rng, s, k):
    u, _ = _coords(s, _CLASS_ANGLE[k] + rng.uniform(0, 360))
    u = (u - u.min()) / (np.ptp(u) + 1e-6)
    lo, hi = rng.uniform(80, 105), rng.uniform(150, 175)
    return lo + (hi - lo) * u + 7 * _smooth_noise(rng, s, 1)


def _tex_mottled(rng, s, k):
    return _CLASS_BASE[k] + 20 * _smooth_noise(rng, s, s / 20) + 6 * _smooth_noise(rng, s, 0.8)


def _tex_brushed(rng, s, k):
    n = rng.standard_normal((s, s)).astype(np.float32)
    klen = max(5, s // 12) | 1
    kernel = np.zeros((klen, klen), np.float32)
    kernel[klen // 2, :] = 1.0 / klen
    rot = cv2.getRotationMatrix2D((klen / 2 - 0.5, klen / 2 - 0.5), _CLASS_ANGLE[k] + rng.uniform(-3, 3), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (klen, klen))
    kernel /= kernel.sum() + 1e-6
    n = cv2.filter2D(n, -1, kernel, borderType=cv2.BORDER_REFLECT)
    n = (n - n.mean()) / (n.std() + 1e-6)
    return _CLASS_BASE[k] + 18 * n


def _tex_tiles(rng, s, k):
    cells = 8
    vals = rng.uniform(-15, 15, (cells, cells)).astype(np.float32)
    img = cv2.resize(vals, (s, s), interpolation=cv2.INTER_NEAREST)
    y, x = np.mgrid[0:s, 0:s]
    c = s / cells
    grout = ((x % c) < max(1, c / 16)) | ((y % c) < max(1, c / 16))
    img = _CLASS_BASE[k] + img - 22 * grout + 5 * _smooth_noise(rng, s, 0.8)
    return img


def _tex_fibers(rng, s, k):
    img = np.full((s, s), _CLASS_BASE[k], np.float32)
    n = int(120 * (s / 256) ** 2) + 20
    pts = rng.uniform(-0.1 * s, 1.1 * s, (n, 2))
    ang = rng.uniform(0, np.pi, n)
    ln = rng.uniform(0.05, 0.25, n) * s
    val = rng.uniform(-20, 20, n)
    for (x, y), a, length, v in zip(pts, ang, ln, val):
        p2 = (int(x + length * np.cos(a)), int(y + length * np.sin(a)))
        cv2.line(img, (int(x), int(y)), p2, float(_CLASS_BASE[k] + v), 1, cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 0.6) + 4 * _smooth_noise(rng, s, 0.7)


def _tex_grain(rng, s, k):
    img = np.zeros((s, s), np.float32)
    for sigma, amp in ((s / 10, 12), (s / 40, 9), (1.0, 7)):
        img += amp * _smooth_noise(rng, s, sigma)
    return _CLASS_BASE[k] + img


_TEXTURE_FUNCS: tuple[Callable, ...] = (
    _tex_noise,
    _tex_weave,
    _tex_grating,
    _tex_speckle,
    _tex_gradient,
    _tex_mottled,
    _tex_brushed,
    _tex_tiles,
    _tex_fibers,
    _tex_grain,
)


# ---------------------------------------------------------------- defects: -> (mask uint8 0/1, alpha float32)
def _thickness(rng, s, lo_frac, hi_frac, lo_min=2):
    lo = max(lo_min, int(round(s * lo_frac)))
    hi = max(lo + 1, int(round(s * hi_frac)))
    return int(rng.integers(lo, hi + 1))


def _centre(rng, s, margin):
    return rng.uniform(margin, s - margin, 2)


def _def_scratch(rng, s):
    length = rng.uniform(s / 20, s / 6)
    c = _centre(rng, s, s / 10)
    a = rng.uniform(0, np.pi)
    bend = rng.uniform(-0.25, 0.25)
    t = np.linspace(-0.5, 0.5, 6)
    pts = np.stack([c[0] + t * length * np.cos(a + bend * t * 4), c[1] + t * length * np.sin(a + bend * t * 4)], 1)
    mask = np.zeros((s, s), np.uint8)
    cv2.polylines(mask, [np.round(pts).astype(np.int32)], False, 1, _thickness(rng, s, 1 / 170, 1 / 70))
    return mask, None


def _def_spot(rng, s):
    r = rng.uniform(max(2.0, s / 100), s / 14)
    c = _centre(rng, s, r + 2)
    mask = np.zeros((s, s), np.uint8)
    axes = (max(1, int(round(r))), max(1, int(round(r * rng.uniform(0.5, 1.0)))))
    cv2.ellipse(mask, (int(c[0]), int(c[1])), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask, None


def _def_crack(rng, s):
    length = rng.uniform(s / 14, s / 6)
    steps = 12
    step = length / steps
    p = _centre(rng, s, s / 8)
    a = rng.uniform(0, 2 * np.pi)
    pts = [p.copy()]
    for _ in range(steps):
        a += rng.normal(0, 0.5)
        p = p + step * np.array([np.cos(a), np.sin(a)])
        pts.append(p.copy())
    mask = np.zeros((s, s), np.uint8)
    th = _thickness(rng, s, 1 / 256, 1 / 110)
    cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1, th)
    if rng.random() < 0.5:  # a branch
        q = pts[steps // 2].copy()
        b = a + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
        br = [q.copy()]
        for _ in range(steps // 3):
            b += rng.normal(0, 0.4)
            q = q + step * np.array([np.cos(b), np.sin(b)])
            br.append(q.copy())
        cv2.polylines(mask, [np.round(np.array(br)).astype(np.int32)], False, 1, max(2, th - 1))
    return mask, None


def _def_stain(rng, s):
    d = rng.uniform(s / 30, s / 6)
    c = _centre(rng, s, d / 2 + 2)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    rx, ry = d / 2, d / 2 * rng.uniform(0.6, 1.0)
    a = rng.uniform(0, np.pi)
    u = ((x - c[0]) * np.cos(a) + (y - c[1]) * np.sin(a)) / rx
    v = (-(x - c[0]) * np.sin(a) + (y - c[1]) * np.cos(a)) / ry
    r2 = u * u + v * v
    wobble = 0.25 * _smooth_noise(rng, s, max(1.0, d / 6))
    mask = ((r2 + wobble) < 1.0).astype(np.uint8)
    # soft inside, but never below 0.6 of the full change: the edge stays visible and exact
    alpha = np.clip(1.0 - 0.4 * r2, 0.6, 1.0).astype(np.float32)
    return mask, alpha


def _def_missing_thread(rng, s):
    w = _thickness(rng, s, 1 / 110, 1 / 40)
    length = rng.uniform(s / 10, s / 6)
    c = _centre(rng, s, s / 8)
    mask = np.zeros((s, s), np.uint8)
    if rng.random() < 0.5:
        x0, y0 = int(c[0] - length / 2), int(c[1] - w / 2)
        mask[max(0, y0) : y0 + w, max(0, x0) : int(x0 + length)] = 1
    else:
        x0, y0 = int(c[0] - w / 2), int(c[1] - length / 2)
        mask[max(0, y0) : int(y0 + length), max(0, x0) : x0 + w] = 1
    return mask, "flatten"


_DEFECT_FUNCS = {
    "scratch": _def_scratch,
    "spot": _def_spot,
    "crack": _def_crack,
    "stain": _def_stain,
    "missing_thread": _def_missing_thread,
}


def _apply_defect(img: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    s = img.shape[0]
    for _ in range(20):
        mask, alpha = _DEFECT_FUNCS[kind](rng, s)
        if mask.sum() >= 4:
            break
    m = mask.astype(bool)
    local = float(img[m].mean())
    # move away from the local level, towards the side with room
    sign = -1.0 if (local > 128 if rng.random() < 0.8 else local <= 128) else 1.0
    if kind == "crack":
        sign = -1.0 if local > 70 else 1.0
    delta = sign * rng.uniform(45, 85)
    if isinstance(alpha, str):  # missing thread: the fine texture is flattened and the level shifted
        sigma = max(2.0, s / 48)
        fine = img - cv2.GaussianBlur(img, (0, 0), sigma)
        img[m] += delta - 0.8 * fine[m]
    elif alpha is None:
        img[m] += delta
    else:
        img[m] += delta * alpha[m]
    return mask


def generate_sample(
    rng_or_seed, texture: int, size: int = 512, defective: bool = False, defect_kind: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One image of texture class `texture` (0..9) and its 0/1 mask (all zero when not defective)."""
    rng = _rng(rng_or_seed)
    if not 0 <= texture < len(TEXTURES):
        raise ValueError(f"texture must be 0..{len(TEXTURES) - 1}, got {texture}")
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    # independent streams: the same seed gives the same texture and sensor noise with or without a defect,
    # so pixels outside the mask are identical (tests use this to check masks are exact)
    rng_tex, rng_def, rng_noise = rng.spawn(3)
    img = _TEXTURE_FUNCS[texture](rng_tex, size, texture).astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    if defective:
        n_def = 1 if rng_def.random() < 0.85 else 2
        for _ in range(n_def):
            kind = defect_kind or (PREFERRED[texture] if rng_def.random() < 0.7 else str(rng_def.choice(DEFECTS)))
            mask |= _apply_defect(img, rng_def, kind)
    img += rng_noise.normal(0, 1.5, img.shape).astype(np.float32)  # sensor noise everywhere
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask


def _defective_flags(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    k = int(round(n * fraction))
    flags = np.zeros(n, bool)
    flags[rng.permutation(n)[:k]] = True
    return flags


def generate(
    n: int, size: int = 512, defective_fraction: float = 1 / 7, seed: int = 0, classes: int = 10
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """n samples cycling through `classes` texture classes; exactly round(n_c * fraction) defective per
    class (n_c = samples of that class). Deterministic per seed."""
    if not 1 <= classes <= len(TEXTURES):
        raise ValueError(f"classes must be 1..{len(TEXTURES)}, got {classes}")
    textures = [i % classes for i in range(n)]
    flags = np.zeros(n, bool)
    for c in range(classes):
        idx = [i for i, t in enumerate(textures) if t == c]
        flags[idx] = _defective_flags(len(idx), defective_fraction, np.random.default_rng([seed, 10_000 + c]))
    out = []
    for i in range(n):
        img, mask = generate_sample(np.random.default_rng([seed, i]), textures[i], size, bool(flags[i]))
        out.append((img, mask, TEXTURES[textures[i]]))
    return out


def write_dagm(
    out: str | Path,
    n_per_class: int = 70,
    size: int = 512,
    defective_fraction: float = 1 / 7,
    seed: int = 0,
    classes: int = 10,
    test_fraction: float = 0.5,
) -> Path:
    """Write a DAGM 2007 layout: Class<k>/{Train,Test}/<id>.PNG, Label/Labels.txt, Label/<id>_label.PNG.

    Per class, exactly round(n_per_class * defective_fraction) images are defective, and the Train/Test
    split is stratified by defective/defect-free. Returns the output folder."""
    out = Path(out)
    if not 1 <= classes <= len(TEXTURES):
        raise ValueError(f"classes must be 1..{len(TEXTURES)}, got {classes}")
    if n_per_class < 2:
        raise ValueError(f"n_per_class must be >= 2, got {n_per_class}")
    out.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        crng = np.random.default_rng([seed, 20_000 + c])
        flags = _defective_flags(n_per_class, defective_fraction, crng)
        test = np.zeros(n_per_class, bool)
        for val in (True, False):  # stratified Train/Test
            idx = np.flatnonzero(flags == val)
            idx = crng.permutation(idx)
            test[idx[: int(round(len(idx) * test_fraction))]] = True
        for sub, in_test in (("Train", False), ("Test", True)):
            folder = out / f"Class{c + 1}" / sub
            (folder / "Label").mkdir(parents=True, exist_ok=True)
            lines = ["1"]
            ids = [i for i in range(n_per_class) if test[i] == in_test]
            for j, i in enumerate(ids, start=1):
                img, mask = generate_sample(np.random.default_rng([seed, c, i]), c, size, bool(flags[i]))
                name = f"{j:04d}"
                write_png(folder / f"{name}.PNG", img)
                label = "0"
                if flags[i]:
                    label = f"{name}_label.PNG"
                    write_png(folder / "Label" / label, mask * np.uint8(255))
                lines.append(f"{j}\t{int(flags[i])}\t{name}.PNG\t0\t{label}")
            (folder / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    (out / "README.txt").write_text(
        f"Synthetic DAGM-like data written by defectseg (seed={seed}, size={size}, classes={classes}, "
        f"n_per_class={n_per_class}, defective_fraction={defective_fraction:.4f}).\n"
        f"Texture classes: {', '.join(TEXTURES[:classes])}.\n"
    )
    return out
