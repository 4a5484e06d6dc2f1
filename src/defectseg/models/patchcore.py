"""PatchCore on the ImageNet-pretrained EfficientNet-Lite0 (`patchcore-lite0`): learn what good parts look like.

No gradient step: the encoder stays as ImageNet left it. Features after the blocks in `layers` (default 4 and 10:
strides 8 and 16, 40 + 112 channels), each averaged over its 3x3 neighbourhood (a patch vector sees its
surroundings, PatchCore's local aggregation; zeros beyond the map counted with `zero_pad`, on in the recipe) and
resampled to the finest layer's grid, are concatenated: one vector per stride-8 patch. The memory bank holds a
coreset of the patch vectors of the good training images
(`greedy_coreset`, fitted by `anomaly.py`). A patch's score is the squared distance to its nearest bank vector,
|f|^2 - 2 f.m + |m|^2 minimised over the bank: matrix products over chunks of the bank, no search structure, the
same in PyTorch and in the exported ONNX graph (the bank is a constant there). The score map is resized to the input
and smoothed by a Gaussian (`sigma` pixels at the model's input size), then mapped to a logit by the calibration
fitted on good validation images, logit = (score - center) / spread: the output is (B, 1, H, W) logits like every
segmenter's, so evaluate, predict, serve, watch and export run it unchanged, and the one post-processing step makes
its masks, defects and verdicts.

Options: layers, sigma, bank_size (rows of the bank; the fit sets it to what it kept), coreset ("greedy" k-center
or "random": how the bank is drawn from the good patches), dims (0: the patch vectors as
they are; k: their first k principal components, fitted on the good training patches: a smaller bank, cheaper
distances), pretrained, zero_pad.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet_lite import LITE0_STAGES, EfficientNetLite0
from .registry import register_model

__all__ = ["BANK_CAP", "PatchCoreLite0", "greedy_coreset"]

# A bank this many rows or more is refused: its checkpoint would pass 100 MB (at 152 dimensions) and every patch of
# every image is compared with every row.
BANK_CAP = 200_000
_CHUNK = 8192  # bank rows per matrix product: bounds the (patches x rows) distance block's memory


def _block_channels() -> list[int]:
    """Output channels of each of Lite0's 16 blocks, in order."""
    return [cout for repeats, _, _, _, _, cout in LITE0_STAGES for _ in range(repeats)]


def _block_strides() -> list[int]:
    """Total stride of each block's output (the stem's 2 times every stride so far)."""
    out, total = [], 2
    for repeats, _, stride, _, _, _ in LITE0_STAGES:
        for i in range(repeats):
            total *= stride if i == 0 else 1
            out.append(total)
    return out


class PatchCoreLite0(nn.Module):
    """x (B, C, H, W) in [0, 1], H and W multiples of 32 -> logits (B, 1, H, W); a higher logit is a patch less like
    any in the bank. Until a bank is fitted (`set_bank`) every score is 0."""

    size_multiple = 32
    input_norm = (0.0, 1.0)  # the encoder's stem holds the weights' input normalisation (efficientnet_lite)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        layers: tuple[int, ...] = (4, 10),
        sigma: float = 4.0,
        bank_size: int = 0,
        dims: int = 0,
        coreset: str = "greedy",
        pretrained: bool = True,
        zero_pad: bool = False,
    ) -> None:
        super().__init__()
        channels = _block_channels()
        layers = tuple(sorted(int(i) for i in layers))
        if num_classes != 1:
            raise ValueError(
                f"patchcore-lite0 scores one thing, how unlike good parts a pixel is; num_classes={num_classes}"
            )
        if not layers or layers[0] < 0 or layers[-1] >= len(channels):
            raise ValueError(f"layers must be block indices 0..{len(channels) - 1} of EfficientNet-Lite0, got {layers}")
        if not 0 <= bank_size < BANK_CAP:
            raise ValueError(
                f"bank_size {bank_size} is over the cap of {BANK_CAP:,} rows (a checkpoint of hundreds of MB, and "
                "every patch compared with every row); choose a smaller model.options.bank_size"
            )
        if coreset not in ("greedy", "random"):
            raise ValueError(f"coreset must be 'greedy' (k-center) or 'random', got {coreset!r}")
        self.coreset = coreset
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0 (pixels; 0: no smoothing), got {sigma}")
        self.layers, self.sigma = layers, float(sigma)
        # zero_pad: zeros beyond the map count in each 3x3 average, as PatchCore's zero-padded neighbourhoods do,
        # so a border patch differs from an inside one in the same way on every image (magnetic tile, greedy 16k
        # bank, benchmarks/probes/patchcore_trial.py: image AUROC 0.941 with the zeros, 0.871 without). On in the
        # recipe; the class default keeps checkpoints fitted before it (without) as they were fitted.
        self.zero_pad = bool(zero_pad)
        self.stride = _block_strides()[layers[0]]  # of the patch grid
        self.encoder = EfficientNetLite0(in_channels)
        if pretrained and not next(self.encoder.parameters()).is_meta:
            self.encoder.load_imagenet()
        self.encoder.blocks = self.encoder.blocks[: layers[-1] + 1]  # the later blocks are never used
        self.encoder.requires_grad_(False)
        self.dim = sum(channels[i] for i in layers)
        if not 0 <= dims <= self.dim:
            raise ValueError(f"dims must be 0 (keep all {self.dim}) or at most {self.dim}, got {dims}")
        # dims > 0: patch vectors are projected on their first `dims` principal components (fitted on the good
        # training patches) before any distance: the bank is smaller and the distances cheaper, per row
        self.bank_dim = dims or self.dim
        self.register_buffer("proj_mean", torch.zeros(self.dim) if dims else None)  # None: not in the state dict
        self.register_buffer("proj", torch.zeros(self.dim, dims) if dims else None)
        self.bank_rows = bank_size  # a plain int: the export traces the chunk loop over it
        self.register_buffer("bank", torch.zeros(bank_size, self.bank_dim))
        self.register_buffer("bank_sq", torch.zeros(bank_size))  # |m|^2 per row, kept with the bank
        self.register_buffer("center", torch.tensor(0.0))
        self.register_buffer("spread", torch.tensor(1.0))
        radius = math.ceil(3 * self.sigma)
        g = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / max(self.sigma, 1e-6)) ** 2)
        self.register_buffer("gauss", (g / g.sum()).view(1, 1, 1, -1), persistent=False)

    def train(self, mode: bool = True) -> PatchCoreLite0:
        super().train(mode)
        self.encoder.eval()  # frozen, BatchNorm included: the ImageNet statistics are the features' meaning
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [0, 1] -> patch vectors (B, dim, H/s, W/s), s the stride of the first of `layers`."""
        y = self.encoder.stem(x)
        maps = []
        for i, block in enumerate(self.encoder.blocks):
            y = block(y)
            if i in self.layers:
                maps.append(F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=self.zero_pad))
        size = maps[0].shape[2:]  # the first layer's grid is the finest (layers are sorted)
        resampled = (F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps[1:])
        return torch.cat([maps[0], *resampled], 1)

    @staticmethod
    def flat(f: torch.Tensor) -> torch.Tensor:
        """Feature maps (B, d, h, w) -> one row per patch (B * h * w, d)."""
        return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])

    def project(self, q: torch.Tensor) -> torch.Tensor:
        """Patch vectors (N, dim) -> the vectors the bank compares (N, bank_dim): as they are, or on the principal
        components (dims > 0)."""
        return q if self.bank_dim == self.dim else (q - self.proj_mean) @ self.proj

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> squared distance of each patch to its nearest bank row (B, 1, H/s, W/s)."""
        f = self.features(x)
        b, _, h, w = f.shape
        q = self.project(self.flat(f))
        if not self.bank_rows:
            return f.new_zeros(b, 1, h, w)
        q_sq = (q * q).sum(1, keepdim=True)
        best = None
        for start in range(0, self.bank_rows, _CHUNK):
            m, m_sq = self.bank[start : start + _CHUNK], self.bank_sq[start : start + _CHUNK]
            dist = (q_sq - 2.0 * q @ m.T + m_sq).amin(1)
            best = dist if best is None else torch.minimum(best, dist)
        return best.clamp_min(0).view(b, 1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.interpolate(self.scores(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        if self.sigma > 0:  # separable Gaussian, edges replicated (no dark border from zero padding)
            r = self.gauss.shape[-1] // 2
            s = F.conv2d(F.pad(s, (r, r, 0, 0), mode="replicate"), self.gauss)
            s = F.conv2d(F.pad(s, (0, 0, r, r), mode="replicate"), self.gauss.transpose(2, 3))
        return (s - self.center) / self.spread

    def functional_macs(self, input_shape: tuple[int, ...]) -> int:
        """MACs of what no layer counts (`bench.count_macs`): the distance products and the Gaussian smoothing."""
        b, _, h, w = input_shape
        patches = b * (h // self.stride) * (w // self.stride)
        blur = 2 * b * h * w * self.gauss.shape[-1] if self.sigma > 0 else 0
        projection = patches * self.dim * self.bank_dim if self.bank_dim != self.dim else 0
        return patches * self.bank_rows * self.bank_dim + blur + projection

    @torch.no_grad()
    def fit_projection(self, vectors: torch.Tensor, seed: int = 0, sample: int = 100_000) -> None:
        """The principal components of (a seeded sample of) raw patch vectors (N, dim) as the projection (dims > 0)."""
        if self.bank_dim == self.dim:
            return
        gen = torch.Generator().manual_seed(seed)
        x = vectors[torch.randperm(len(vectors), generator=gen)[:sample]].double()
        mean = x.mean(0)
        _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
        self.proj_mean.copy_(mean.float())
        self.proj.copy_(vt[: self.bank_dim].T.float())

    @torch.no_grad()
    def set_bank(self, bank: torch.Tensor) -> None:
        """Use `bank` (N, bank_dim), projected vectors, as the memory bank (N: the bank_size the model was built
        with)."""
        if bank.shape != self.bank.shape:
            raise ValueError(f"bank of shape {tuple(bank.shape)} for a model built for {tuple(self.bank.shape)}")
        self.bank.copy_(bank)
        self.bank_sq.copy_((bank * bank).sum(1))

    @torch.no_grad()
    def set_calibration(self, center: float, spread: float) -> None:
        """logit = (score - center) / spread (spread > 0)."""
        self.center.fill_(center)
        self.spread.fill_(max(spread, 1e-12))


@torch.no_grad()
def greedy_coreset(
    vectors: torch.Tensor, size: int, seed: int = 0, project: int = 64, candidates: int = 200_000
) -> torch.Tensor:
    """Indices (size,) of a greedy k-center coreset of `vectors` (N, D): each pick is the vector farthest from all
    picks so far, so the bank covers the rare patches too, which a random sample misses. For speed the distances are
    taken after a random projection to `project` dimensions (Johnson-Lindenstrauss: they keep their order well), over
    at most `candidates` vectors drawn at random, with one fused update of the nearest-pick distance per pick."""
    n = vectors.shape[0]
    gen = torch.Generator().manual_seed(seed)
    if size >= n:
        return torch.arange(n)
    pool = torch.randperm(n, generator=gen)[:candidates] if n > candidates else torch.arange(n)
    x = vectors[pool].float()
    if project and x.shape[1] > project:
        x = x @ (torch.randn(x.shape[1], project, generator=gen) / math.sqrt(project))
    x_sq = (x * x).sum(1)
    nearest = torch.full((x.shape[0],), math.inf)
    picks = torch.empty(size, dtype=torch.long)
    pick = int(torch.randint(x.shape[0], (1,), generator=gen))
    for i in range(size):
        picks[i] = pick
        d = x_sq - 2.0 * (x @ x[pick]) + x_sq[pick]
        torch.minimum(nearest, d, out=nearest)
        pick = int(nearest.argmax())
    return pool[picks]


register_model(
    "patchcore-lite0",
    PatchCoreLite0,
    {"layers": (4, 10), "sigma": 4.0, "bank_size": 0, "pretrained": True},
    task="anomaly",
    recipe={
        "data": {"size": 256, "defect_free_only": True, "augment": "none"},
        "model": {"options": {"bank_size": 16384, "zero_pad": True}},
    },
)
