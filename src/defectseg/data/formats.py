"""On-disk dataset layouts -> a list of `Sample`s (paths only; nothing is decoded here).

Layouts (see docs/formats.md): DAGM 2007 (and the small `img/` + `label/` DAGM sample layout),
KolektorSDD, magnetic tile, NEU-Seg, MVTec AD and a generic `images/` + `masks/` layout.
`load_dataset(root, format="auto")` detects the layout, lists the samples and checks what can be checked
without decoding (missing masks, orphan masks, duplicated stems, empty folders). Content problems
(unreadable files, mask size, mask values) are found when a sample is read (`SegmentationDataset`).
Every problem is a ValueError naming the file and the fix, or with `skip_bad=True` an entry in
`DatasetSpec.skipped`.

A layout is one reader registered with `@register_format(name, detect=..., layout=...)`; `FORMATS` lists the
registered names in detection order (the order of registration: specific layouts first, generic last).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .io import MASK_DIR_NAMES, MASK_SUFFIXES, is_image_file

BINARY_CLASSES = ["background", "defect"]
NEU_CLASSES = ["background", "inclusion", "patches", "scratches"]


@dataclass
class Sample:
    """One (image, mask) pair on disk.

    mask None means defect-free (all background). `group` is the class folder / texture class / defect type
    (balanced across splits, reported in meta); `part` names the physical part, lot or session the image shows
    (kept in one split; "" = the image alone). `split` is the dataset-given split ("train"/"val"/"test") or None.
    `reference` is an optional defect-free image of the same part (unused by the readers here).
    `defective` is known from the layout where possible (DAGM flag, MT_Free, MVTec good), else None.
    `root` is the dataset root; `key` (image path relative to it, posix) is the identity used in split files.
    """

    image: Path
    mask: Path | None
    mask_rule: str = "gt127"
    group: str = ""
    split: str | None = None
    reference: Path | None = None
    defective: bool | None = None
    root: Path | None = None
    part: str = ""

    def __post_init__(self) -> None:
        self.image = Path(self.image)
        if self.mask is not None:
            self.mask = Path(self.mask)
        elif self.defective is None:
            self.defective = False

    @property
    def key(self) -> str:
        if self.root is not None:
            try:
                return self.image.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return self.image.as_posix()


@dataclass
class DatasetSpec:
    root: Path
    format: str
    samples: list[Sample]
    class_names: list[str] = field(default_factory=lambda: list(BINARY_CLASSES))
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)


class _Problems:
    """Collects layout problems: raise at once, or record them with skip_bad."""

    def __init__(self, skip_bad: bool) -> None:
        self.skip_bad = skip_bad
        self.skipped: list[tuple[str, str]] = []

    def __call__(self, path: Path | str, reason: str, fix: str) -> None:
        if not self.skip_bad:
            raise ValueError(f"{path}: {reason}; {fix} (or pass --skip-bad to skip and list such samples)")
        self.skipped.append((str(path), reason))


Reader = Callable[[Path, _Problems, bool], tuple[list[Sample], list[str]]]


@dataclass(frozen=True)
class _Format:
    name: str
    detect: Callable[[Path], bool]  # root -> does it look like this layout (cheap: folder names only)
    layout: str  # what detection looks for, shown when nothing matches
    read: Reader


_REGISTRY: dict[str, _Format] = {}
FORMATS: tuple[str, ...] = ()  # registered names in detection order; kept in step by register_format


def register_format(name: str, detect: Callable[[Path], bool], layout: str) -> Callable[[Reader], Reader]:
    """Decorator registering a reader `(root, problems, allow_unlabeled) -> (samples, class_names)` as format
    `name`. Detection tries formats in registration order, so register specific layouts before loose ones."""

    def deco(read: Reader) -> Reader:
        global FORMATS
        if name in _REGISTRY or name == "auto":
            raise ValueError(f"format {name!r} is already registered (or reserved); register it under another name")
        _REGISTRY[name] = _Format(name, detect, layout, read)
        FORMATS = tuple(_REGISTRY)
        return read

    return deco


def _images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image-named entries of a folder, regular files or not: a FIFO, a device or a broken link among them is a
    sample whose decode fails naming it (rather than vanishing, its mask then blamed for having no image)."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if not p.is_dir() and is_image_file(p, regular=False))


def _dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _stem_map(files: list[Path], problems: _Problems, what: str, base: Path | None = None) -> dict[str, Path]:
    """stem (relative to base when given) -> file, reporting duplicated stems."""
    out: dict[str, Path] = {}
    dup: set[str] = set()
    for f in files:
        stem = (f.relative_to(base).with_suffix("").as_posix()) if base is not None else f.stem
        if stem in out:
            problems(
                f,
                f"duplicated {what} stem {stem!r} (also {out[stem].name})",
                "keep one file per stem (rename or remove the other)",
            )
            dup.add(stem)
            continue
        out[stem] = f
    for s in dup:  # neither copy is trusted
        out.pop(s, None)
    return out


# ---------------------------------------------------------------- DAGM
_CLASS_RE = re.compile(r"^class\d+$", re.IGNORECASE)


def _find_child(folder: Path, name: str) -> Path | None:
    """Case-insensitive child lookup."""
    exact = folder / name
    if exact.exists():
        return exact
    for p in folder.iterdir():
        if p.name.lower() == name.lower():
            return p
    return None


def _dagm_small(root: Path) -> tuple[Path, Path] | None:
    img, lab = _find_child(root, "img"), _find_child(root, "label")
    if (
        img
        and lab
        and img.is_dir()
        and lab.is_dir()
        and any(p.stem.lower().endswith("_label") for p in lab.iterdir() if is_image_file(p))
    ):
        return img, lab
    return None


def _dagm_class_dirs(root: Path) -> list[Path]:
    if _CLASS_RE.match(root.name) and any(_find_child(root, s) for s in ("Train", "Test")):
        return [root]
    return [
        d
        for d in _dirs(root)
        if _CLASS_RE.match(d.name)
        and any((_find_child(d, s) or Path("/nonexistent")).is_dir() for s in ("Train", "Test"))
    ]


def _read_dagm_split(root: Path, folder: Path, group: str, split: str, problems: _Problems) -> list[Sample]:
    images = _stem_map(_images(folder), problems, "image")
    label_dir = _find_child(folder, "Label")
    labels_txt = _find_child(label_dir, "Labels.txt") if label_dir else None
    samples: list[Sample] = []
    if labels_txt is None:
        masks = {p.stem[: -len("_label")]: p for p in _images(label_dir)} if label_dir else {}
        for stem, img in images.items():
            m = masks.get(stem)
            samples.append(Sample(img, m, "gt127", group, split, defective=m is not None, root=root))
        for stem, m in masks.items():
            if stem not in images:
                problems(m, "mask without an image", "add the image or remove the mask")
        return samples
    lines = labels_txt.read_text(errors="replace").splitlines()
    listed: set[str] = set()
    for no, line in enumerate(lines[1:], start=2):  # first line is a header
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 5 or parts[1] not in ("0", "1"):
            problems(
                f"{labels_txt}:{no}",
                f"malformed line {line.strip()!r}",
                "each line must be 'id<TAB>flag<TAB>image<TAB>0<TAB>label'",
            )
            continue
        flag, image_name, label_name = parts[1] == "1", parts[2], parts[4]
        stem = Path(image_name).stem
        listed.add(stem)
        img = images.get(stem)
        if img is None:
            problems(
                folder / image_name,
                f"listed in {labels_txt.name} line {no} but not found",
                "restore the image or remove its line",
            )
            continue
        if not flag:
            samples.append(Sample(img, None, "gt127", group, split, defective=False, root=root))
            continue
        mask = (label_dir / label_name) if label_name != "0" else None
        if mask is not None and not mask.exists():
            alt = _find_child(label_dir, label_name)
            mask = alt if alt is not None else mask
        if mask is None or not mask.exists():
            problems(
                img,
                f"marked defective in {labels_txt} line {no} but its mask "
                f"{label_name if label_name != '0' else '(none named)'} is missing",
                "add the mask to Label/ or set the flag to 0",
            )
            continue
        samples.append(Sample(img, mask, "gt127", group, split, defective=True, root=root))
    for stem, img in images.items():
        if stem not in listed:
            problems(img, f"image not listed in {labels_txt}", "add a line for it to Labels.txt or remove it")
    return samples


def _is_dagm(root: Path) -> bool:
    return bool(_dagm_class_dirs(root)) or _dagm_small(root) is not None


@register_format(
    "dagm",
    detect=_is_dagm,
    layout="Class<k>/{Train,Test}/ folders (DAGM 2007), or img/ + label/<id>_label.* (DAGM samples)",
)
def read_dagm(root: Path, problems: _Problems, allow_unlabeled: bool = False) -> tuple[list[Sample], list[str]]:
    small = _dagm_small(root)
    if small is not None and not _dagm_class_dirs(root):
        img_dir, lab_dir = small
        images = _stem_map(_images(img_dir), problems, "image")
        masks = _stem_map([p for p in _images(lab_dir)], problems, "mask")
        masks = {(s[: -len("_label")] if s.lower().endswith("_label") else s): p for s, p in masks.items()}
        samples = []
        for stem, img in images.items():
            m = masks.get(stem)
            if m is None and not allow_unlabeled:
                problems(
                    img,
                    f"no mask found in label/ (expected {stem}_label.PNG)",
                    "add the mask, or pass --allow-unlabeled if the image is defect-free",
                )
                continue
            samples.append(Sample(img, m, "gt127", root.name, None, defective=True if m else False, root=root))
        for stem, m in masks.items():
            if stem not in images:
                problems(m, "mask without an image", "add the image or remove the mask")
        return samples, list(BINARY_CLASSES)
    samples = []
    for cdir in _dagm_class_dirs(root):
        for sub, split in (("Train", "train"), ("Test", "test")):
            folder = _find_child(cdir, sub)
            if folder is not None and folder.is_dir():
                samples += _read_dagm_split(root, folder, cdir.name, split, problems)
    return samples, list(BINARY_CLASSES)


# ---------------------------------------------------------------- KolektorSDD
_KOS_RE = re.compile(r"^kos\d+$", re.IGNORECASE)
_PART_RE = re.compile(r"^part\d+$", re.IGNORECASE)


def _kolektor_dirs(root: Path) -> list[Path]:
    return [d for d in _dirs(root) if _KOS_RE.match(d.name)]


def _is_kolektor(root: Path) -> bool:
    return bool(_kolektor_dirs(root))


@register_format(
    "kolektor", detect=_is_kolektor, layout="kos<NN>/ folders with Part<M>.jpg + Part<M>_label.bmp (KolektorSDD)"
)
def read_kolektor(root: Path, problems: _Problems, allow_unlabeled: bool = False) -> tuple[list[Sample], list[str]]:
    samples = []
    for d in _kolektor_dirs(root):
        files = _images(d)
        labels = {p.stem[: -len("_label")].lower(): p for p in files if p.stem.lower().endswith("_label")}
        images = _stem_map([p for p in files if not p.stem.lower().endswith("_label")], problems, "image")
        for stem, img in images.items():
            m = labels.get(stem.lower())
            if m is None and not allow_unlabeled:
                problems(
                    img,
                    f"no mask {stem}_label.bmp next to the image",
                    "add the mask, or pass --allow-unlabeled if the image is defect-free",
                )
                continue
            samples.append(Sample(img, m, "gt0", d.name, None, root=root, part=d.name))  # kosNN: one part
        for stem, m in labels.items():
            if stem not in {s.lower() for s in images}:
                problems(m, "mask without an image", "add the image or remove the mask")
    return samples, list(BINARY_CLASSES)


# ---------------------------------------------------------------- magnetic tile
def _mt_dirs(root: Path) -> list[Path]:
    return [d for d in _dirs(root) if d.name.startswith("MT_") and (d / "Imgs").is_dir()]


def _is_magnetic_tile(root: Path) -> bool:
    return bool(_mt_dirs(root))


@register_format("magnetic-tile", detect=_is_magnetic_tile, layout="MT_<Class>/Imgs/ folders (magnetic tile)")
def read_magnetic_tile(
    root: Path, problems: _Problems, allow_unlabeled: bool = False
) -> tuple[list[Sample], list[str]]:
    samples = []
    for d in _mt_dirs(root):
        files = _images(d / "Imgs")
        jpgs = _stem_map([p for p in files if p.suffix.lower() in (".jpg", ".jpeg")], problems, "image")
        pngs = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        free = d.name == "MT_Free"
        for stem, img in jpgs.items():
            m = pngs.get(stem)
            if m is None and not (free or allow_unlabeled):
                problems(
                    img,
                    f"no mask {stem}.png next to the image",
                    "add the mask, or pass --allow-unlabeled if the image is defect-free",
                )
                continue
            samples.append(Sample(img, m, "gt127", d.name, None, defective=not free, root=root))
        for stem, m in pngs.items():
            if stem not in jpgs:
                problems(
                    m, "mask without an image (expected a .jpg of the same stem)", "add the image or remove the mask"
                )
    return samples, list(BINARY_CLASSES)


# ---------------------------------------------------------------- NEU-Seg
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def _is_neu(root: Path) -> bool:
    return (root / "img_dir").is_dir() and (root / "ann_dir").is_dir()


@register_format("neu-seg", detect=_is_neu, layout="img_dir/<split>/ + ann_dir/<split>/ (NEU-Seg)")
def read_neu(root: Path, problems: _Problems, allow_unlabeled: bool = False) -> tuple[list[Sample], list[str]]:
    img_root, ann_root = root / "img_dir", root / "ann_dir"
    samples = []
    for sdir in _dirs(img_root):
        split = _SPLIT_ALIASES.get(sdir.name.lower())
        if split is None:
            problems(sdir, "unknown split folder", "name split folders train, val or test")
            continue
        images = _stem_map(_images(sdir), problems, "image")
        adir = ann_root / sdir.name
        anns = _stem_map(_images(adir), problems, "mask") if adir.is_dir() else {}
        for stem, img in images.items():
            m = anns.get(stem)
            if m is None and not allow_unlabeled:
                problems(
                    img,
                    f"no mask ann_dir/{sdir.name}/{stem}.png",
                    "add the mask, or pass --allow-unlabeled if the image is defect-free",
                )
                continue
            samples.append(Sample(img, m, "ids", "neu", split, root=root))
        for stem, m in anns.items():
            if stem not in images:
                problems(m, "mask without an image", "add the image or remove the mask")
    return samples, list(NEU_CLASSES)


# ---------------------------------------------------------------- MVTec AD
def _is_mvtec_category(d: Path) -> bool:
    return (d / "train" / "good").is_dir() and (d / "test").is_dir()


def _mvtec_categories(root: Path) -> list[Path]:
    if _is_mvtec_category(root):
        return [root]
    return [d for d in _dirs(root) if _is_mvtec_category(d)]


def _is_mvtec(root: Path) -> bool:
    return bool(_mvtec_categories(root))


@register_format("mvtec", detect=_is_mvtec, layout="<category>/train/good + test/ + ground_truth/ (MVTec AD)")
def read_mvtec(root: Path, problems: _Problems, allow_unlabeled: bool = False) -> tuple[list[Sample], list[str]]:
    """MVTec AD. Its own split has no defects in train, so split is None: a supervised split is drawn
    stratified by category/type (`make_split`)."""
    samples = []
    for cat in _mvtec_categories(root):
        c = cat.name
        for img in _images(cat / "train" / "good"):
            samples.append(Sample(img, None, "gt127", f"{c}/good", None, defective=False, root=root))
        for tdir in _dirs(cat / "test"):
            if tdir.name == "good":
                for img in _images(tdir):
                    samples.append(Sample(img, None, "gt127", f"{c}/good", None, defective=False, root=root))
                continue
            gdir = cat / "ground_truth" / tdir.name
            masks = (
                {p.stem[: -len("_mask")]: p for p in _images(gdir) if p.stem.endswith("_mask")} if gdir.is_dir() else {}
            )
            for img in _images(tdir):
                m = masks.get(img.stem)
                if m is None:
                    problems(
                        img,
                        f"no mask ground_truth/{tdir.name}/{img.stem}_mask.png",
                        "add the mask or move the image to test/good if it is defect-free",
                    )
                    continue
                samples.append(Sample(img, m, "gt127", f"{c}/{tdir.name}", None, defective=True, root=root))
    return samples, list(BINARY_CLASSES)


# ---------------------------------------------------------------- generic
_GENERIC_IMAGES = ("images", "imgs", "image")
# Mask folders: io.MASK_DIR_NAMES; mask stem suffixes: io.MASK_SUFFIXES (shared with io.find_images).


def _generic_dirs(root: Path) -> tuple[Path, Path] | None:
    img = next((root / n for n in _GENERIC_IMAGES if (root / n).is_dir()), None)
    msk = next((root / n for n in MASK_DIR_NAMES if (root / n).is_dir()), None)
    return (img, msk) if img and msk else None


def _read_class_names(root: Path) -> list[str]:
    f = root / "classes.txt"
    if f.is_file():
        names = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
        if len(names) < 2:
            raise ValueError(f"{f}: list at least two class names, one a line, background first")
        return names
    return list(BINARY_CLASSES)


def _is_generic(root: Path) -> bool:
    return _generic_dirs(root) is not None


@register_format(
    "generic",
    detect=_is_generic,
    layout=f"images/ + masks/ folders (also {'/'.join(_GENERIC_IMAGES)} + {'/'.join(MASK_DIR_NAMES)})",
)
def read_generic(root: Path, problems: _Problems, allow_unlabeled: bool = False) -> tuple[list[Sample], list[str]]:
    """`images/` + `masks/` with matching stems (subfolders allowed; mask stem may end in _mask/_label/_gt).
    Masks are read with the "auto" rule (0/1 or class ids when all values <= 127, else > 127 is defect).
    Class names from `classes.txt` (one a line, background first), else background/defect.
    Top-level subfolders named train/val/test (in images/) are taken as the dataset's split; any other top-level
    subfolder is a part (kept in one split; `make_split`)."""
    img_dir, mask_dir = _generic_dirs(root)  # type: ignore[misc]
    images = _stem_map(_images(img_dir, recursive=True), problems, "image", base=img_dir)
    masks_raw = _stem_map(_images(mask_dir, recursive=True), problems, "mask", base=mask_dir)
    masks: dict[str, Path] = {}
    for stem, p in masks_raw.items():
        key = stem
        if stem not in images:
            for suf in MASK_SUFFIXES:
                if stem.endswith(suf) and stem[: -len(suf)] in images:
                    key = stem[: -len(suf)]
                    break
        if key in masks:
            problems(p, f"two masks for image stem {key!r} (also {masks[key].name})", "keep one mask per image")
            continue
        masks[key] = p
    samples = []
    for stem, img in images.items():
        m = masks.get(stem)
        if m is None and not allow_unlabeled:
            problems(
                img,
                f"no mask for image stem {stem!r} in {mask_dir.name}/",
                "add the mask, or pass --allow-unlabeled if images without masks are defect-free",
            )
            continue
        first = stem.split("/")[0] if "/" in stem else ""
        split = _SPLIT_ALIASES.get(first.lower())
        group = first if (first and split is None) else root.name
        # a sub-folder is a part (kept in one split) unless data.keep_parts is false (then balanced like a type)
        part = first if (first and split is None) else ""
        samples.append(Sample(img, m, "auto", group, split, root=root, part=part))
    for stem, m in masks.items():
        if stem not in images:
            problems(m, "mask without an image", "add the image or remove the mask")
    return samples, _read_class_names(root)


# ---------------------------------------------------------------- detection
def detect_format(root: str | Path) -> str:
    """Name of the layout found at root (first match in FORMATS order); ValueError listing what it looked for."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    for f in _REGISTRY.values():
        if f.detect(root):
            return f.name
    looked = "\n".join(f"  - {f.name}: {f.layout}" for f in _REGISTRY.values())
    raise ValueError(
        f"{root}: no known dataset layout found. Looked for:\n{looked}\n"
        "Arrange the data in one of these layouts (the generic one is simplest), or pass --format."
    )


def load_dataset(
    root: str | Path,
    format: str = "auto",
    skip_bad: bool = False,
    allow_unlabeled: bool = False,
    mask_rule: str = "auto",
) -> DatasetSpec:
    """List the samples of the dataset at root. format: "auto" or one of FORMATS. mask_rule: "auto" keeps
    each format's rule (data/io.py), any other rule replaces it for every mask."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; give the dataset's root folder")
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in _REGISTRY:
        raise ValueError(f"unknown format {format!r}; choose auto or one of: {', '.join(FORMATS)}")
    reader = _REGISTRY[fmt]
    if format != "auto" and not reader.detect(root):
        raise ValueError(f"{root}: does not look like format {fmt!r} (expected {reader.layout})")
    problems = _Problems(skip_bad)
    samples, class_names = reader.read(root, problems, allow_unlabeled)
    if not samples:
        found = "; ".join(f"{p}: {r}" for p, r in problems.skipped[:5])
        raise ValueError(
            f"{root}: no usable samples found for format {fmt!r}"
            + (f" (all skipped: {found})" if found else "")
            + "; check that the folder holds the images and masks"
        )
    if mask_rule != "auto":
        samples = [replace(s, mask_rule=mask_rule) for s in samples]
    samples.sort(key=lambda s: s.key)
    return DatasetSpec(root=root, format=fmt, samples=samples, class_names=class_names, skipped=problems.skipped)
