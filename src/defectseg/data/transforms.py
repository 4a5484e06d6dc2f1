"""On-device augmentation of image and mask together (kornia).

`Augmenter(preset, seed, ignore_index=IGNORE_INDEX)(image (B,C,H,W) float, mask (B,H,W) long)` -> (image, mask) on
the tensors' device. Geometry is applied identically to both: flips and 90° rotations are exact index
operations; free rotation / scale / translation / shear is one affine warp per sample, bilinear with
reflection padding for the image and nearest for the mask, where pixels that come from outside the image
get `ignore_index`. Photometric changes (brightness, contrast, blur, noise) touch the image only.

Randomness: the Augmenter owns a CPU `torch.Generator` seeded with `seed`; all per-sample parameters are
drawn from it (noise on the device from a generator seeded from it), so a run is reproducible on any
device. `state_dict()` / `load_state_dict()` save and restore that generator so training resumes exactly.

Presets (`PRESETS`): "none" (identity), "light" (flips, 90° turns, mild brightness/contrast, faint noise),
"strong" (plus free rotation, scale, translation, shear, blur, stronger photometric changes).
Images are expected in [0, 1] (the training step divides the uint8 batch by 255 and scales back, since
models take raw 0..255 pixels) and are clamped back to [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .io import IGNORE_INDEX

PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {
        "hflip": 0.5,
        "vflip": 0.5,
        "rot90": 0.5,
        "brightness": (0.5, 0.08),
        "contrast": (0.5, 0.1),
        "noise": (0.3, 0.015),
    },
    "strong": {
        "hflip": 0.5,
        "vflip": 0.5,
        "rot90": 0.5,
        "affine": (0.6, 30.0, (0.8, 1.25), 0.1, 8.0),  # p, degrees, scale range, translate fraction, shear deg
        "brightness": (0.8, 0.2),
        "contrast": (0.8, 0.3),
        "blur": (0.3, (0.3, 1.5)),
        "noise": (0.5, 0.04),
    },
}


def _affine_matrices(
    angle: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, shear: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """(B,2,3) source->destination pixel matrices around the image centre."""
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a, sh = torch.deg2rad(angle), torch.deg2rad(shear)
    cos, sin = torch.cos(a), torch.sin(a)
    # R * S * Shear(x)
    m00, m01 = cos * scale, (cos * torch.tan(sh) - sin) * scale
    m10, m11 = sin * scale, (sin * torch.tan(sh) + cos) * scale
    b0 = cx + tx - (m00 * cx + m01 * cy)
    b1 = cy + ty - (m10 * cx + m11 * cy)
    return torch.stack([torch.stack([m00, m01, b0], -1), torch.stack([m10, m11, b1], -1)], -2)


class Augmenter:
    """Seeded joint image/mask augmentation; see the module docstring."""

    def __init__(
        self,
        preset: str = "light",
        seed: int = 0,
        ignore_index: int = IGNORE_INDEX,
        photometric: bool = True,
        geometric: bool = True,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.preset, self.ignore_index = preset, ignore_index
        self.cfg = dict(PRESETS[preset])
        if not photometric:
            for k in ("brightness", "contrast", "blur", "noise"):
                self.cfg.pop(k, None)
        if not geometric:
            for k in ("hflip", "vflip", "rot90", "affine"):
                self.cfg.pop(k, None)
        self.generator = torch.Generator().manual_seed(int(seed))

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"preset": self.preset, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])

    # ---------------------------------------------------------------- sampling helpers
    def _bern(self, p: float, b: int) -> torch.Tensor:
        return torch.rand(b, generator=self.generator) < p

    def _uniform(self, lo: float, hi: float, b: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=self.generator)

    # ---------------------------------------------------------------- apply
    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.ndim != 4 or mask.ndim != 3 or image.shape[0] != mask.shape[0] or image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"expected image (B,C,H,W) and mask (B,H,W) of the same size, got "
                f"{tuple(image.shape)} and {tuple(mask.shape)}"
            )
        if not self.cfg:
            return image, mask
        # Geometry first (image and mask together), then photometric changes (image only): the order in
        # which random parameters are drawn, so a seed gives the same augmentation on any device.
        image, mask = self._geometry(image.float(), mask.long())
        return self._photometric(image), mask

    def _geometry(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, dev = self.cfg, image.device
        b, _, h, w = image.shape

        def where(sel: torch.Tensor, a: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
            sel = sel.to(dev).view(-1, *([1] * (a.ndim - 1)))
            return torch.where(sel, a, other)

        # exact flips and quarter turns
        if "hflip" in cfg:
            s = self._bern(cfg["hflip"], b)
            image, mask = where(s, image.flip(-1), image), where(s, mask.flip(-1), mask)
        if "vflip" in cfg:
            s = self._bern(cfg["vflip"], b)
            image, mask = where(s, image.flip(-2), image), where(s, mask.flip(-2), mask)
        if "rot90" in cfg:
            s = self._bern(cfg["rot90"], b)
            if h == w:  # a quarter turn keeps the shape only for square images
                k = torch.randint(1, 4, (b,), generator=self.generator)
                for turns in (1, 2, 3):
                    sel = s & (k == turns)
                    if sel.any():
                        image = where(sel, torch.rot90(image, turns, (-2, -1)), image)
                        mask = where(sel, torch.rot90(mask, turns, (-2, -1)), mask)
            else:  # non-square: half turns only
                image = where(s, image.flip(-1).flip(-2), image)
                mask = where(s, mask.flip(-1).flip(-2), mask)
        # free affine warp
        if "affine" in cfg:
            p, deg, (s_lo, s_hi), trans, shear = cfg["affine"]
            s = self._bern(p, b)
            angle = self._uniform(-deg, deg, b)
            scale = torch.exp(self._uniform(math.log(s_lo), math.log(s_hi), b))
            tx, ty = self._uniform(-trans, trans, b) * w, self._uniform(-trans, trans, b) * h
            sh = self._uniform(-shear, shear, b)
            idx = torch.nonzero(s).flatten()
            if len(idx):
                from kornia.geometry.transform import warp_affine  # kornia loads only if an epoch warps

                m = _affine_matrices(angle[idx], scale[idx], tx[idx], ty[idx], sh[idx], h, w).to(dev)
                di = idx.to(dev)
                img_w = warp_affine(
                    image[di], m, (h, w), mode="bilinear", padding_mode="reflection", align_corners=True
                )
                m_w = (
                    warp_affine(
                        (mask[di] + 1).unsqueeze(1).float(),
                        m,
                        (h, w),
                        mode="nearest",
                        padding_mode="zeros",
                        align_corners=True,
                    )
                    .squeeze(1)
                    .round()
                    .long()
                )
                m_w = torch.where(m_w == 0, torch.full_like(m_w, self.ignore_index), m_w - 1)
                image, mask = image.clone(), mask.clone()
                image[di], mask[di] = img_w, m_w
        return image, mask

    def _photometric(self, image: torch.Tensor) -> torch.Tensor:
        cfg, dev, b = self.cfg, image.device, image.shape[0]
        if "contrast" in cfg:
            p, amount = cfg["contrast"]
            s = self._bern(p, b)
            f = torch.where(s, self._uniform(1 - amount, 1 + amount, b), torch.ones(b)).to(dev)
            mean = image.mean(dim=(1, 2, 3), keepdim=True)
            image = (image - mean) * f.view(-1, 1, 1, 1) + mean
        if "brightness" in cfg:
            p, amount = cfg["brightness"]
            s = self._bern(p, b)
            d = torch.where(s, self._uniform(-amount, amount, b), torch.zeros(b)).to(dev)
            image = image + d.view(-1, 1, 1, 1)
        if "blur" in cfg:
            p, (lo, hi) = cfg["blur"]
            s = self._bern(p, b)
            sig = self._uniform(lo, hi, b)
            idx = torch.nonzero(s).flatten()
            if len(idx):
                from kornia.filters import gaussian_blur2d  # kornia loads only if an epoch blurs

                sg = sig[idx].to(dev)
                ks = int(2 * math.ceil(3 * hi) + 1)
                di = idx.to(dev)
                image = image.clone()
                image[di] = gaussian_blur2d(image[di], (ks, ks), torch.stack([sg, sg], -1))
        if "noise" in cfg:
            p, amount = cfg["noise"]
            s = self._bern(p, b)
            std = torch.where(s, self._uniform(0, amount, b), torch.zeros(b)).to(dev)
            if s.any():
                seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
                g = torch.Generator(device=dev).manual_seed(seed)
                noise = torch.randn(image.shape, generator=g, device=dev, dtype=image.dtype)
                image = image + noise * std.view(-1, 1, 1, 1)
        if any(k in cfg for k in ("contrast", "brightness", "noise", "blur")):
            image = image.clamp_(0.0, 1.0)
        return image
