"""Decoding images and masks to uint8 arrays.

`read_image(path, channels)` -> uint8 (H, W) gray or (H, W, 3) RGB, as a viewer shows the file: the EXIF
orientation is applied (to masks too, so a mask drawn over the image as shown fits it). Nothing about the range is
guessed: 16-bit images are scaled from their bit depth, the one the file declares (a PNG `sBIT` chunk, a TIFF
`MaxSampleValue`), else `DEFECTSEG_BIT_DEPTH` (e.g. 12 for a camera's 12-bit data in 16-bit files; the same
setting for training and inspection), else 16; a value above the depth is refused. Float images must hold finite
values in [0, 1] (scaled by 255). Palette images are converted to their colours, alpha is dropped. A file with
several frames or pages (animated GIF/PNG/WebP, multi-page TIFF) is refused: save each as its own image.

`find_images(inputs, recursive)` expands files and folders into the images to predict, listing what it skips.

`read_mask(path, rule)` -> uint8 (H, W) class ids, with one of the mask rules:

- ``"gt0"``:   defect (1) where the gray value is > 0 (KolektorSDD).
- ``"gt127"``: defect (1) where the gray value is > 127 (DAGM 0/255, magnetic tile, MVTec).
- ``"ids"``:   pixel values are class ids already (NEU-Seg 0..3). Palette masks use the palette index.
- ``"auto"``:  ``"ids"`` when every value is <= 127 (0/1 or small class ids), else ``"gt127"``
  (0/255 or JPEG-noisy binary masks). Used by the generic reader. A lossless mask holding both small values
  (1..127) and large ones (128..255), e.g. 0/1/2/255, is refused as ambiguous: > 127 would silently turn the
  small values into background, and "ids" would read 255 as "ignore". The user picks the rule
  (``--set data.mask_rule=...``).

Every failure is a ValueError naming the file.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MASK_RULES = ("gt0", "gt127", "ids", "auto")
# Every suffix here decodes with read_image (8/16-bit gray, RGB; tested); compared lower-cased.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")
# Mask pixels with this value count for nothing: not in the loss, not in the metrics, not a defect.
IGNORE_INDEX = 255


def defect_pixels(mask: Any) -> Any:
    """Boolean map of a mask's defect pixels (numpy or torch): any class but background and IGNORE_INDEX."""
    return (mask > 0) & (mask != IGNORE_INDEX)


# How masks are named on disk. A mask stem may end in one of these (generic layout: a0_mask.png for a0.png;
# also DAGM/KolektorSDD _label, MVTec _mask); find_images uses them so masks are never predicted on.
MASK_SUFFIXES = ("_mask", "_label", "_gt")
# Mask folder names of the generic layout, in the order the generic reader looks for them.
MASK_DIR_NAMES = ("masks", "mask", "labels", "annotations", "ground_truth", "gt")

# Our own cap replaces Pillow's (which warns, then fails at 2x its limit): checked from the header before any
# pixel is decoded, so a 400 KB PNG claiming 20000x20000 costs nothing. 150 M pixels lets line-scan images of
# e.g. 16384 x 8192 through (predict tiles them); raise it with DEFECTSEG_MAX_PIXELS for larger ones.
Image.MAX_IMAGE_PIXELS = None
DEFAULT_MAX_PIXELS = 150_000_000


def max_pixels() -> int:
    """The pixel cap per image: DEFECTSEG_MAX_PIXELS if set (a positive integer), else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get("DEFECTSEG_MAX_PIXELS", "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"DEFECTSEG_MAX_PIXELS must be a positive integer (pixels per image), got {raw!r}")
    return int(raw)


class ImageTooLarge(ValueError):
    """An image refused from its header: more pixels than the cap allows."""


def check_pixels(w: int, h: int, label: str | Path, cap: int | None = None) -> None:
    """The header check every decode passes before any pixel is read: an empty image is a ValueError, one over
    `cap` pixels (default `max_pixels()`) an ImageTooLarge, both naming `label`."""
    if w < 1 or h < 1:
        raise ValueError(f"{label}: {w}x{h} pixels is an empty image")
    limit = cap or max_pixels()
    if w * h > limit:
        where = "" if cap else " (the environment variable DEFECTSEG_MAX_PIXELS)"
        raise ImageTooLarge(
            f"{label}: {w}x{h} pixels is over the cap of {limit:,} pixels per image; if the image "
            f"is genuine, raise the cap{where}"
        )


def _open(path: Path) -> Image.Image:
    """Open and fully decode one image file, as shown (EXIF orientation applied); every failure a ValueError
    naming the file and the reason."""
    if path.exists() and not path.is_file():  # a FIFO would block the reader forever, a device never end
        raise ValueError(f"{path}: not a regular file (a folder, FIFO or device); give image files")
    try:
        im = Image.open(path)
        w, h = im.size
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied; make the file readable to this user") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: cannot decode image ({exc}); the file is unreadable or truncated") from None
    try:
        check_pixels(w, h, path)
        _check_frames(im, path)
    except ValueError:
        im.close()
        raise
    try:
        im.load()  # force the full decode: truncated files raise here
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: cannot decode image ({exc}); the file is unreadable or truncated") from None
    return _upright(im)


def _check_frames(im: Image.Image, label: str | Path) -> None:
    """Refuse a file of several frames or pages (only the first would be inspected, the rest never looked at)."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and im.format != "MPO":  # MPO: a camera JPEG with previews, its first frame the photo
        raise ValueError(
            f"{label}: holds {frames} frames or pages and only single images are inspected; save each frame as "
            "its own file"
        )


def _upright(im: Image.Image) -> Image.Image:
    """The image as a viewer shows it: EXIF orientation 2-8 applied (a no-op without one)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block: the pixels are still the image
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        bits = _declared_bits(im)
        im = ImageOps.exif_transpose(im)
        im.info["defectseg_bits"] = bits  # the transposed copy loses the chunks that declared it
    return im


def _declared_bits(im: Image.Image) -> int | None:
    """Significant bits per sample the file declares: a PNG sBIT chunk, a TIFF MaxSampleValue; None if none."""
    if "defectseg_bits" in im.info:
        return im.info["defectseg_bits"]
    if im.format == "PNG" and getattr(im, "filename", ""):
        try:
            with open(im.filename, "rb") as f:
                return _png_sbit(f)
        except OSError:
            return None
    if im.format == "TIFF":
        top = im.tag_v2.get(281)  # MaxSampleValue
        top = top[0] if isinstance(top, tuple) else top
        if top and ((int(top) + 1) & int(top)) == 0:  # 2**n - 1
            return int(top).bit_length()
    return None


def _png_sbit(f: Any) -> int | None:
    """The sBIT chunk of a PNG in binary file `f` (the largest per-channel significant bits), or None: the chunks
    before the pixel data are walked (Pillow does not read sBIT)."""
    if f.read(8) != b"\x89PNG\r\n\x1a\n":
        return None
    while True:
        head = f.read(8)
        if len(head) < 8:
            return None
        n, kind = int.from_bytes(head[:4], "big"), head[4:]
        if kind == b"sBIT":
            return max(f.read(n), default=0) or None
        if kind in (b"IDAT", b"IEND"):
            return None
        f.seek(n + 4, 1)


def bit_depth(declared: int | None, path: Path) -> int:
    """The bit depth a 16-bit image is scaled from: what the file declares, else DEFECTSEG_BIT_DEPTH, else 16."""
    if declared:
        return declared
    raw = os.environ.get("DEFECTSEG_BIT_DEPTH", "")
    if not raw:
        return 16
    if not raw.isdigit() or not 1 <= int(raw) <= 16:
        raise ValueError(f"DEFECTSEG_BIT_DEPTH must be a bit depth from 1 to 16 (e.g. 12), got {raw!r}")
    return int(raw)


def _scale16(a: np.ndarray, path: Path, bits: int | None) -> np.ndarray:
    """A float or 16-bit array to uint8 by the module docstring's rules (ValueError naming the file)."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: the image holds NaN or infinite values; save finite values in [0, 1]")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise ValueError(
                f"{path}: a float image must hold values in [0, 1], this one {a.min():g} to {a.max():g}; scale it "
                "to [0, 1] or save it as an 8- or 16-bit image"
            )
        return (a * 255.0 + 0.5).astype(np.uint8)
    depth = bit_depth(bits, path)
    top = (1 << depth) - 1
    a = a.astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > top):
        raise ValueError(
            f"{path}: holds values {a.min()} to {a.max()}, outside the {depth}-bit range 0..{top}; set "
            "DEFECTSEG_BIT_DEPTH to the data's bit depth, or save it as an 8- or 16-bit image"
        )
    return ((a * 255 + top // 2) // top).astype(np.uint8)


def _to_array(im: Image.Image, path: Path) -> np.ndarray:
    """Uint8 (H,W) or (H,W,3), keeping gray as gray and colour as RGB."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode == "LA":
        return np.asarray(im.getchannel(0), dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _scale16(np.asarray(im), path, _declared_bits(im))
    if mode in ("RGB",):
        return np.asarray(im, dtype=np.uint8)
    if mode in ("RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    raw = np.asarray(im)
    if raw.ndim == 3 and raw.shape[2] >= 3:  # e.g. 48-bit RGB read as an array
        return _scale16(raw[..., :3], path, _declared_bits(im))
    if raw.ndim == 2:
        return _scale16(raw, path, _declared_bits(im))
    raise ValueError(f"{path}: unsupported image mode {mode!r}; convert it to 8-bit gray or RGB")


def to_gray(a: np.ndarray) -> np.ndarray:
    """RGB uint8 -> gray uint8 (ITU-R 601 luma, like PIL's convert('L'))."""
    if a.ndim == 2:
        return a
    r, g, b = (a[..., i].astype(np.uint32) for i in range(3))
    return ((r * 299 + g * 587 + b * 114 + 500) // 1000).astype(np.uint8)


def as_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (H, W) or (H, W, 3) -> (H, W) for channels=1 (luma, `to_gray`) or (H, W, 3) for channels=3."""
    if channels == 1:
        return to_gray(a) if a.ndim == 3 else a
    return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Decode an image to uint8: (H, W) gray or (H, W, 3) RGB.

    channels=None keeps gray as gray and colour as RGB; 1 converts to gray; 3 converts to RGB.
    """
    path = Path(path)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    a = _to_array(_open(path), path)
    return np.ascontiguousarray(a if channels is None else as_channels(a, channels))


def decode_image(data: bytes, name: str = "upload", cap: int | None = None) -> np.ndarray:
    """Decode image bytes (an upload) as `read_image` decodes a file: uint8 (H, W) gray or (H, W, 3) RGB.

    The pixel count is checked from the header before any pixel is decoded: over `cap` (default `max_pixels()`)
    raises ImageTooLarge; empty data, a 0-pixel image, a format Pillow does not know or a truncated file raise a
    ValueError naming `name`."""
    if not data:
        raise ValueError(f"{name}: empty file; send the image's bytes")
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"{name}: not an image this server reads (PNG, JPEG, BMP, TIFF, ...)") from None
    check_pixels(w, h, name, cap)
    _check_frames(im, name)
    try:
        im.load()
        if im.format == "PNG":
            im.info["defectseg_bits"] = _png_sbit(io.BytesIO(data))
        return np.ascontiguousarray(_to_array(_upright(im), Path(name)))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{name}: cannot decode the image ({exc}); the file is truncated or damaged") from None


def read_mask(path: str | Path, rule: str) -> np.ndarray:
    """Decode a mask to uint8 (H, W) class ids with `rule` in {"gt0", "gt127", "ids", "auto"}."""
    path = Path(path)
    if rule not in MASK_RULES:
        raise ValueError(f"unknown mask rule {rule!r}; choose one of {MASK_RULES}")
    im = _open(path)
    if rule in ("ids", "auto") and im.mode in ("P", "PA"):
        a = np.asarray(im.getchannel(0) if im.mode == "PA" else im)  # palette index = class id
    elif rule in ("ids", "auto") and im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        if a.size and a.max() > 255:
            raise ValueError(
                f"{path}: mask holds value {int(a.max())} > 255, which is no class id; "
                "save masks as 8-bit class ids (0 = background)"
            )
        a = a.astype(np.uint8)
    else:
        a = _to_array(im, path)
        if a.ndim == 3:
            if rule in ("ids", "auto") and not (
                np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
            ):
                raise ValueError(
                    f"{path}: colour mask cannot be read as class ids; save it as a gray or "
                    "palette PNG whose values are class ids (0 = background)"
                )
            # gt0/gt127 on a colour mask: the brightest channel, so pure red (luma 76) is a defect, not background
            a = a[..., 0] if rule in ("ids", "auto") else a.max(axis=2)
    if rule == "auto":
        rule = "ids" if (a.size == 0 or int(a.max()) <= 127) else "gt127"
        # JPEG masks are binary masks with compression noise (every value occurs near edges): > 127 is right.
        # A lossless mask with small and large values was written that way on purpose, and no rule is safe.
        if rule == "gt127" and im.format != "JPEG" and np.any((a > 0) & (a <= 127)):
            values = np.unique(a)
            shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
            raise ValueError(
                f"{path}: ambiguous mask values ({shown}): small values (1..127) and large ones (128..255) both "
                "occur, so the automatic rule cannot tell a 0/255 mask from class ids. Choose the rule with "
                "--set data.mask_rule=gt0 (every value > 0 is defect), gt127 (values > 127 are defect, the "
                "small ones background) or ids (values are class ids, 255 = ignore)"
            )
    if rule == "gt0":
        return (a > 0).astype(np.uint8)
    if rule == "gt127":
        return (a > 127).astype(np.uint8)
    return np.ascontiguousarray(a, dtype=np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) as shown (EXIF orientation applied), from the header only (no full decode)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # shown a quarter turn from how it is stored
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: cannot read image header ({exc})") from None
    return (w, h) if turned else (h, w)


def write_png(path: str | Path, array: np.ndarray, compress: int = 1) -> None:
    """Write a uint8 gray/RGB array as PNG (fast, low compression)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"write_png expects uint8, got {a.dtype}")
    Image.fromarray(a).save(path, format="PNG", compress_level=compress)


# Files no output may replace (`claim_file`): checkpoints, by name or by torch.save's zip format.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file beside it, fsync, then a rename: a crash or a full disk leaves the
    old file (or none), never a truncated one, and no temp file. OSError when the place is unwritable."""
    # Same folder, so os.replace is an atomic rename; plain open (not mkstemp's 0600) gives the umask's mode.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself is unusable: nothing was written
        raise


def claim_file(path: Path, option: str, overwrite: bool = False, inputs: Iterable[Path | str | None] = ()) -> None:
    """Refuse to write the file `path` (given as `option`) over one of the command's `inputs` or over a checkpoint,
    ever, and over any other existing file unless `overwrite`."""
    path = Path(path)
    for given in inputs:
        if given is not None and path.resolve() == Path(given).resolve():
            raise ValueError(f"{option} {path} is an input of this command; choose another file")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    if not path.exists():
        return
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format
    if path.suffix.lower() in CHECKPOINT_SUFFIXES or zipped:
        raise ValueError(f"{option} {path} is a checkpoint, which no output replaces; choose another file")
    if not overwrite:
        raise ValueError(f"{option} {path} exists; pass --overwrite to replace it, or choose another file")


def is_image_file(path: Path, regular: bool = True) -> bool:
    """An image name (IMAGE_SUFFIXES, not hidden), and with `regular` a regular file (links followed)."""
    return (not regular or path.is_file()) and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def is_mask_name(path: Path) -> bool:
    """True when the file stem ends in one of MASK_SUFFIXES (any case): a mask, not an image to predict."""
    stem = path.stem.lower()
    return any(stem.endswith(suf) for suf in MASK_SUFFIXES)


# find_images also skips DAGM's Label/ (and the DAGM sample's label/) folders.
_MASK_DIRS = frozenset({*MASK_DIR_NAMES, "label"})


def find_images(
    inputs: Iterable[str | Path], recursive: bool = False, exclude: str | Path | None = None
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into the images to predict: (images, [(skipped path, reason)]).

    A folder gives its IMAGE_SUFFIXES files (any case) sorted by name; hidden entries are skipped silently,
    anything else skipped is listed with a reason: non-image files, mask files (stem ending in MASK_SUFFIXES),
    mask folders (MASK_DIR_NAMES, Label) and, unless recursive, other sub-folders. Files given explicitly are
    kept as given (even with another suffix, a mask name or missing: the reader reports them). A path given
    twice (or reached twice) is kept once. The folder `exclude` (predict's output folder) is never searched, so
    a second run does not read the first one's masks and overlays back as inputs; nor is any folder holding
    a results.jsonl (an earlier prediction's output).
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    images: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    kept: set[Path] = set()  # resolved, so a/b.png and ./a/b.png are one image
    searched: set[Path] = set()  # resolved folders: a folder given twice or a symlink loop is searched once

    def keep(path: Path) -> None:
        if path.resolve() in kept:
            skipped.append((path, "given twice (kept once)"))
            return
        kept.add(path.resolve())
        images.append(path)

    def search(folder: Path) -> None:
        searched.add(folder.resolve())
        # Files and sub-folders sorted together by name: the order a file browser shows.
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue  # .DS_Store, .ipynb_checkpoints, editor swap files: never meant as input
            if entry.is_dir():
                if entry.resolve() == excluded:
                    skipped.append((entry, "the output folder"))
                elif (entry / "results.jsonl").is_file():
                    skipped.append((entry, "an earlier prediction's output folder (holds results.jsonl)"))
                elif entry.name.lower() in _MASK_DIRS:
                    skipped.append((entry, "mask/label folder"))
                elif not recursive:
                    skipped.append((entry, "sub-folder (pass --recursive)"))
                elif entry.resolve() in searched:
                    skipped.append((entry, "folder already searched (symbolic link)"))
                else:
                    search(entry)
            elif not entry.is_file():
                skipped.append((entry, "not a regular file"))
            elif entry.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.append((entry, f"not an image (suffix {entry.suffix or 'none'})"))
            elif is_mask_name(entry):
                skipped.append((entry, "mask/label file"))
            else:
                keep(entry)

    for p in map(Path, inputs):
        if not p.is_dir():
            keep(p)
        elif p.resolve() in searched:
            skipped.append((p, "folder given twice (searched once)"))
        else:
            search(p)
    return images, skipped
