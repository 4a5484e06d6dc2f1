"""Defects made on the fly for training: synthetic ones painted onto good parts, and real ones pasted elsewhere.

Both work on a training batch on its device, after the augmentation: `fn(x, mask) -> (x, mask)` with x (B, C, H, W)
float in [0, 1] and mask (B, H, W) long class ids (IGNORE_INDEX = 255 for pixels that count for nothing). Each
draws its parameters from its own CPU `torch.Generator` seeded by the trainer from (seed, epoch), so a run is
reproducible on any device, and each touches only images of the batch without a defect pixel (good parts).

`SyntheticDefects(p)`: each good image gets, with probability p, one defect (modelled on DRAEM, CutPaste and
SuperSimpleNet, written for this data flow):
- its shape: thresholded smooth noise (stains), a scratch (a random polyline of varying width), a blob (a
  noisy ellipse) or pits (a few small disks);
- its content: texture from elsewhere (the same or another image of the batch, shifted), or the image's own
  pixels under a brightness/contrast change;
- blended with a random opacity (0.4 to 1) and edge softness (a Gaussian of sigma 0 to 1.5 pixels).
The mask it adds is exact: the pixels where the defect's blend weight is at least half its opacity (outside them
the image changes by less than half the defect's contrast), labelled `defect_class`.

`CopyPaste(p)`: each good image gets, with probability p, the defect pixels of a defective image of the same batch
(all of them, with their class ids), rotated by a multiple of 90° and flipped at random, pasted at a random place;
the pixels within `margin` of the defect are blended in with a fading weight so no rectangle edge is left, and
the pasted mask is the source's defect pixels exactly. The trainer's `data.defective_share` keeps defective images
in the batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .io import IGNORE_INDEX, defect_pixels

SHAPES = ("noise", "scratch", "blob", "pits")


def _defect_free(mask: torch.Tensor) -> torch.Tensor:
    """(B,) bool: images without a defect pixel."""
    return ~defect_pixels(mask).flatten(1).any(1)


def _blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (H, W) float map (identity for sigma < 0.3)."""
    if sigma < 0.3:
        return m
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, device=m.device, dtype=m.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(m[None, None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))[0, 0]


class SyntheticDefects:
    """See the module docstring. p: probability per good image; shapes: which of SHAPES to draw from."""

    def __init__(self, p: float, seed: int = 0, defect_class: int = 1, shapes: tuple[str, ...] = SHAPES) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"synthetic defect probability {p} is not in [0, 1]")
        unknown = set(shapes) - set(SHAPES)
        if unknown or not shapes:
            raise ValueError(f"unknown defect shapes {sorted(unknown)}; choose from {SHAPES}")
        self.p, self.defect_class, self.shapes = p, defect_class, tuple(shapes)
        self.gen = torch.Generator().manual_seed(seed)

    def _u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=self.gen))

    def _int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        return int(torch.randint(lo, hi + 1, (), generator=self.gen))

    def shape(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """A (H, W) float 0/1 defect shape (never empty)."""
        kind = self.shapes[self._int(0, len(self.shapes) - 1)]
        yy = torch.arange(h, device=device, dtype=torch.float32)[:, None]
        xx = torch.arange(w, device=device, dtype=torch.float32)[None, :]
        if kind == "noise":  # stains: smooth noise above a high quantile covers 0.2-3 % of the image
            low = torch.rand((1, 1, h // 16 + 2, w // 16 + 2), generator=self.gen).to(device)
            field = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0, 0]
            m = field >= torch.quantile(field.flatten()[:: max(1, h * w // 65536)], 1 - self._u(0.002, 0.03))
        elif kind == "scratch":  # a polyline of 2-5 segments, each of its own width (1-4 px)
            y, x = self._u(0, h), self._u(0, w)
            angle, m = self._u(0, 2 * math.pi), torch.zeros((h, w), dtype=torch.bool, device=device)
            for _ in range(self._int(2, 5)):
                angle += self._u(-0.8, 0.8)
                length = self._u(0.05, 0.25) * max(h, w)
                y2, x2 = y + length * math.sin(angle), x + length * math.cos(angle)
                dy, dx = y2 - y, x2 - x
                t = (((yy - y) * dy + (xx - x) * dx) / max(dy * dy + dx * dx, 1e-6)).clamp(0, 1)
                dist = torch.sqrt((yy - (y + t * dy)) ** 2 + (xx - (x + t * dx)) ** 2)
                m |= dist <= self._u(0.5, 2.0)
                y, x = y2, x2
        elif kind == "blob":  # a rotated ellipse with a noisy rim
            cy, cx = self._u(0, h), self._u(0, w)
            a, b = self._u(2, max(3, min(h, w) / 8)), self._u(2, max(3, min(h, w) / 8))
            th = self._u(0, math.pi)
            u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
            v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
            low = torch.rand((1, 1, 6, 6), generator=self.gen).to(device)
            rim = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0, 0] - 0.5
            m = (u / a) ** 2 + (v / b) ** 2 + 0.6 * rim <= 1
        else:  # pits: 1-4 disks of radius 1-3 px
            m = torch.zeros((h, w), dtype=torch.bool, device=device)
            for _ in range(self._int(1, 4)):
                cy, cx, r = self._u(0, h), self._u(0, w), self._u(1, 3)
                m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if not m.any():  # a shape that fell outside the image: one pixel, so the call always adds a defect
            m[self._int(0, h - 1), self._int(0, w - 1)] = True
        return m.float()

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1], mask (B, H, W) long -> both with defects painted on some good images."""
        if self.p == 0:
            return x, mask
        b, _, h, w = x.shape
        free = _defect_free(mask).cpu()
        chosen = [i for i in range(b) if free[i] and self._u() < self.p]
        if not chosen:
            return x, mask
        x, mask = x.clone(), mask.clone()
        for i in chosen:
            m = self.shape(h, w, x.device)
            opacity, sigma = self._u(0.4, 1.0), self._u(0.0, 1.5)
            if self._u() < 0.5:  # texture from elsewhere: another (or the same) image, shifted
                j = self._int(0, b - 1)
                src = torch.roll(x[j], (self._int(h // 4, h - h // 4), self._int(w // 4, w - w // 4)), (1, 2))
            else:  # the image's own pixels, brighter or darker and with more or less contrast
                shift = self._u(0.1, 0.35) * (1 if self._u() < 0.5 else -1)
                src = ((x[i] - x[i].mean()) * self._u(0.5, 1.5) + x[i].mean() + shift).clamp(0, 1)
            weight = _blur(m, sigma).clamp(0, 1)
            x[i] = x[i] * (1 - opacity * weight) + src * (opacity * weight)
            label = (weight >= 0.5) & (mask[i] != IGNORE_INDEX)
            mask[i][label] = self.defect_class
        return x, mask


class CopyPaste:
    """See the module docstring. p: probability per good image; margin: pixels of context blended in around a
    pasted defect."""

    def __init__(self, p: float, seed: int = 0, margin: int = 3) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"copy-paste probability {p} is not in [0, 1]")
        self.p, self.margin = p, margin
        self.gen = torch.Generator().manual_seed(seed)

    def _u(self) -> float:
        return float(torch.rand((), generator=self.gen))

    def _int(self, lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=self.gen))

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1], mask (B, H, W) long -> both with real defects pasted on some good images."""
        if self.p == 0:
            return x, mask
        b, _, h, w = x.shape
        free = _defect_free(mask).cpu()
        sources = [i for i in range(b) if not free[i]]
        chosen = [i for i in range(b) if free[i] and self._u() < self.p] if sources else []
        if not chosen:
            return x, mask
        x, mask = x.clone(), mask.clone()
        for i in chosen:
            j = sources[self._int(0, len(sources) - 1)]
            defect = defect_pixels(mask[j])
            ys, xs = torch.nonzero(defect, as_tuple=True)
            mg = self.margin
            y0, y1 = max(0, int(ys.min()) - mg), min(h, int(ys.max()) + 1 + mg)
            x0, x1 = max(0, int(xs.min()) - mg), min(w, int(xs.max()) + 1 + mg)
            patch, labels = x[j][:, y0:y1, x0:x1], torch.where(defect, mask[j], 0)[y0:y1, x0:x1]
            k, flip = self._int(0, 3), self._u() < 0.5
            patch, labels = torch.rot90(patch, k, (1, 2)), torch.rot90(labels, k, (0, 1))
            if flip:
                patch, labels = patch.flip(2), labels.flip(1)
            ph, pw = labels.shape
            if ph > h or pw > w:
                continue
            py, px = self._int(0, h - ph), self._int(0, w - pw)
            inside = (labels > 0).float()
            # weight 1 on the defect, fading to 0 over the margin (a max-pool dilation, then a blur)
            grown = F.max_pool2d(inside[None, None], 2 * mg + 1, 1, mg)[0, 0] if mg else inside
            weight = torch.maximum(inside, _blur(grown, mg / 2)).clamp(0, 1)
            region = x[i][:, py : py + ph, px : px + pw]
            x[i][:, py : py + ph, px : px + pw] = region * (1 - weight) + patch * weight
            target = mask[i][py : py + ph, px : px + pw]
            paste = (labels > 0) & (target != IGNORE_INDEX)
            target[paste] = labels[paste]
        return x, mask
