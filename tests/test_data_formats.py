"""Readers: a tiny fixture in each layout written here, read back; auto-detection; bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectseg.data import (
    FORMATS,
    IMAGE_SUFFIXES,
    SegmentationDataset,
    detect_format,
    load_dataset,
    load_pair,
    read_image,
    read_mask,
    register_format,
)


def img(h=24, w=32, seed=0, rgb=False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3) if rgb else (h, w), dtype=np.uint8)


def box(h=24, w=32, value=255, y=4, x=6, size=5) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y : y + size, x : x + size] = value
    return m


def save(path: Path, a: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)
    return path


# ---------------------------------------------------------------- fixture writers
def write_dagm(root: Path, classes=(1, 2)) -> Path:
    for k in classes:
        for sub in ("Train", "Test"):
            d = root / f"Class{k}" / sub
            lines = ["1"]
            for j in range(1, 4):  # 3 images, #2 defective
                name = f"{j:04d}"
                save(d / f"{name}.PNG", img(seed=j))
                if j == 2:
                    save(d / "Label" / f"{name}_label.PNG", box())
                    lines.append(f"{j}\t1\t{name}.PNG\t0\t{name}_label.PNG")
                else:
                    lines.append(f"{j}\t0\t{name}.PNG\t0\t0")
            (d / "Label").mkdir(parents=True, exist_ok=True)
            (d / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return root


def write_dagm_small(root: Path) -> Path:
    for j in range(3):
        save(root / "img" / f"{100 + j}.PNG", img(seed=j))
        save(root / "label" / f"{100 + j}_label.PNG", box(value=255))
    return root


def write_kolektor(root: Path) -> Path:
    for kos in ("kos01", "kos02"):
        for m in range(1, 4):
            save(root / kos / f"Part{m}.jpg", img(seed=m))
            mask = box(value=1) if m == 1 else np.zeros((24, 32), np.uint8)
            # palette bmp like KolektorSDD
            p = Image.fromarray(mask, mode="L").convert("P")
            (root / kos).mkdir(parents=True, exist_ok=True)
            p.save(root / kos / f"Part{m}_label.bmp")
    return root


def write_magnetic_tile(root: Path) -> Path:
    for cls, n in (("MT_Blowhole", 2), ("MT_Crack", 1), ("MT_Free", 3)):
        for j in range(n):
            save(root / cls / "Imgs" / f"exp{j}_num_{j}.jpg", img(seed=j))
            m = box(value=200) if cls != "MT_Free" else np.zeros((24, 32), np.uint8)
            m[0, 0] = 100  # below the > 127 threshold: background
            save(root / cls / "Imgs" / f"exp{j}_num_{j}.png", m)
    return root


def write_neu(root: Path) -> Path:
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for j in range(n):
            save(root / "img_dir" / split / f"{j:06d}.jpg", img(seed=j, rgb=True))
            m = np.zeros((24, 32), np.uint8)
            m[2:6, 2:6] = 1
            m[10:12, 10:20] = 3
            save(root / "ann_dir" / split / f"{j:06d}.png", m)
    return root


def write_mvtec(root: Path) -> Path:
    cat = root / "bottle"
    for j in range(3):
        save(cat / "train" / "good" / f"{j:03d}.png", img(seed=j, rgb=True))
    save(cat / "test" / "good" / "000.png", img(seed=9, rgb=True))
    for t in ("broken", "scratch"):
        for j in range(2):
            save(cat / "test" / t / f"{j:03d}.png", img(seed=j, rgb=True))
            save(cat / "ground_truth" / t / f"{j:03d}_mask.png", box(value=255))
    return root


def write_generic(root: Path, n=4) -> Path:
    for j in range(n):
        save(root / "images" / f"a{j}.png", img(seed=j))
        save(root / "masks" / f"a{j}.png", box(value=255 if j % 2 else 0))
    return root


WRITERS = {
    "dagm": write_dagm,
    "dagm-small": write_dagm_small,
    "kolektor": write_kolektor,
    "magnetic-tile": write_magnetic_tile,
    "neu-seg": write_neu,
    "mvtec": write_mvtec,
    "generic": write_generic,
}
EXPECTED = {  # layout -> (format, samples, defective-by-mask count, class count)
    "dagm": ("dagm", 12, 4, 2),
    "dagm-small": ("dagm", 3, 3, 2),
    "kolektor": ("kolektor", 6, 2, 2),
    "magnetic-tile": ("magnetic-tile", 6, 3, 2),
    "neu-seg": ("neu-seg", 6, 6, 4),
    "mvtec": ("mvtec", 8, 4, 2),
    "generic": ("generic", 4, 2, 2),
}


@pytest.mark.parametrize("layout", list(WRITERS))
def test_each_layout_detected_and_read(tmp_path, layout):
    root = WRITERS[layout](tmp_path / layout)
    fmt, n, n_def, n_cls = EXPECTED[layout]
    assert detect_format(root) == fmt
    spec = load_dataset(root)
    assert spec.format == fmt and len(spec.samples) == n and spec.num_classes == n_cls
    assert spec.skipped == []
    assert load_dataset(root, format=fmt).samples == spec.samples
    keys = [s.key for s in spec.samples]
    assert len(set(keys)) == n and all(not k.startswith("/") for k in keys)
    defective = 0
    for s in spec.samples:
        image, mask = load_pair(s, 1, n_cls)
        assert image.dtype == np.uint8 and image.shape == (24, 32)
        assert mask.shape == (24, 32) and mask.max() < n_cls
        defective += bool(mask.any())
        if s.defective is not None:
            assert s.defective == bool(mask.any()), s.key
    assert defective == n_def


def test_dagm_details(tmp_path):
    spec = load_dataset(write_dagm(tmp_path / "d"))
    assert sorted({s.group for s in spec.samples}) == ["Class1", "Class2"]
    assert sorted({s.split for s in spec.samples}) == ["test", "train"]
    s = next(s for s in spec.samples if s.defective)
    assert s.key.startswith("Class") and s.key.endswith("0002.PNG")
    np.testing.assert_array_equal(read_mask(s.mask, s.mask_rule), box(value=1))


def test_mask_values_per_layout(tmp_path):
    neu = load_dataset(write_neu(tmp_path / "neu"))
    assert neu.class_names == ["background", "inclusion", "patches", "scratches"]
    assert {s.split for s in neu.samples} == {"train", "val", "test"}
    _, m = load_pair(neu.samples[0], 1, 4)
    assert set(np.unique(m)) == {0, 1, 3}
    mt = load_dataset(write_magnetic_tile(tmp_path / "mt"))
    free = [s for s in mt.samples if s.group == "MT_Free"]
    assert len(free) == 3 and all(s.defective is False for s in free)
    _, m = load_pair(next(s for s in mt.samples if s.group == "MT_Crack"), 1, 2)
    assert m[0, 0] == 0 and m.sum() == 25  # 100 is not > 127, 200 is
    kos = load_dataset(write_kolektor(tmp_path / "kos"))
    assert {s.mask_rule for s in kos.samples} == {"gt0"}
    _, m = load_pair(next(s for s in kos.samples if s.key == "kos01/Part1.jpg"), 1, 2)
    assert m.sum() == 25


def test_mvtec_groups(tmp_path):
    spec = load_dataset(write_mvtec(tmp_path / "m"))
    assert sorted({s.group for s in spec.samples}) == ["bottle/broken", "bottle/good", "bottle/scratch"]
    assert sum(1 for s in spec.samples if s.mask is None) == 4
    # a single category folder works too
    assert len(load_dataset(tmp_path / "m" / "bottle").samples) == 8


def test_generic_class_ids_and_classes_txt(tmp_path):
    root = tmp_path / "g"
    save(root / "images" / "x.png", img())
    m = np.zeros((24, 32), np.uint8)
    m[1, 1], m[2, 2] = 1, 2
    save(root / "masks" / "x_mask.png", m)
    with pytest.raises(ValueError, match="outside the known classes"):
        load_pair(load_dataset(root).samples[0], 1, 2)
    (root / "classes.txt").write_text("background\nhole\nscratch\n")
    spec = load_dataset(root)
    assert spec.num_classes == 3
    _, got = load_pair(spec.samples[0], 1, 3)
    np.testing.assert_array_equal(got, m)


def test_generic_unlabeled_needs_flag(tmp_path):
    root = write_generic(tmp_path / "g")
    save(root / "images" / "extra.png", img())
    with pytest.raises(ValueError, match=r"extra\.png.*allow-unlabeled"):
        load_dataset(root)
    spec = load_dataset(root, allow_unlabeled=True)
    extra = next(s for s in spec.samples if s.key == "images/extra.png")
    assert extra.mask is None and extra.defective is False
    spec = load_dataset(root, skip_bad=True)
    assert len(spec.samples) == 4 and len(spec.skipped) == 1 and "extra.png" in spec.skipped[0][0]


def test_read_image_conversions(tmp_path):
    a16 = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80
    p = tmp_path / "16.png"
    Image.fromarray(a16).save(p)
    got = read_image(p)
    assert got.dtype == np.uint8 and got.shape == (24, 32)
    np.testing.assert_array_equal(got, ((a16.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))
    pal = Image.fromarray(img()).convert("P")
    pal.putpalette([255 - (i % 256) for i in range(768)])
    pal.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (24, 32, 3)
    rgb = save(tmp_path / "rgb.png", img(rgb=True))
    assert read_image(rgb).shape == (24, 32, 3)
    assert read_image(rgb, channels=1).shape == (24, 32)
    gray = save(tmp_path / "g.png", img())
    assert read_image(gray, channels=3).shape == (24, 32, 3)
    rgba = save(tmp_path / "rgba.png", np.dstack([img(rgb=True), np.full((24, 32), 255, np.uint8)]))
    assert read_image(rgba).shape == (24, 32, 3)


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_image_suffix_decodes(tmp_path, suffix):
    """IMAGE_SUFFIXES is what find_images offers for prediction: each must decode (8-bit gray and RGB, and
    16-bit gray where the format holds it)."""
    arrays = [img(), img(rgb=True)]
    if suffix in (".png", ".tif", ".tiff", ".pgm", ".ppm"):
        arrays.append(img().astype(np.uint16) * 257)
    for i, a in enumerate(arrays):
        a = read_image(save(tmp_path / f"{i}{suffix.upper()}", a))
        assert a.dtype == np.uint8 and a.shape[:2] == (24, 32)


def test_read_mask_rules(tmp_path):
    m = np.array([[0, 1, 100, 128, 255]], np.uint8)
    p = save(tmp_path / "m.png", m)
    assert read_mask(p, "gt0").tolist() == [[0, 1, 1, 1, 1]]
    assert read_mask(p, "gt127").tolist() == [[0, 0, 0, 1, 1]]
    assert read_mask(p, "ids").tolist() == m.tolist()
    with pytest.raises(ValueError, match="ambiguous mask values"):  # 1 and 100 next to 128 and 255
        read_mask(p, "auto")
    small = save(tmp_path / "s.png", np.array([[0, 1, 3]], np.uint8))
    assert read_mask(small, "auto").tolist() == [[0, 1, 3]]
    with pytest.raises(ValueError, match="unknown mask rule"):
        read_mask(p, "xx")


# ---------------------------------------------------------------- bad input
def test_unreadable_and_truncated(tmp_path):
    root = write_generic(tmp_path / "g")
    (root / "images" / "a1.png").write_bytes(b"not an image")
    data = (root / "images" / "a2.png").read_bytes()
    (root / "images" / "a2.png").write_bytes(data[: len(data) // 2])
    spec = load_dataset(root)
    with pytest.raises(ValueError, match=r"a1\.png.*(unreadable|cannot decode)"):
        read_image(root / "images" / "a1.png")
    with pytest.raises(ValueError, match=r"a2\.png"):
        read_image(root / "images" / "a2.png")
    ds = SegmentationDataset(spec.samples)
    with pytest.raises(ValueError, match=r"a1\.png"):
        ds[1]
    ds = SegmentationDataset(spec.samples, skip_bad=True)
    assert len(ds) == 2 and sorted(Path(p).name for p, _ in ds.skipped) == ["a1.png", "a2.png"]


def test_mask_size_mismatch(tmp_path):
    root = write_generic(tmp_path / "g")
    save(root / "masks" / "a0.png", np.zeros((10, 10), np.uint8))
    spec = load_dataset(root)
    with pytest.raises(ValueError, match=r"a0\.png: mask size 10x10 differs from image a0\.png size 32x24"):
        SegmentationDataset(spec.samples)[0]


def test_missing_and_orphan_masks(tmp_path):
    root = write_generic(tmp_path / "g")
    (root / "masks" / "a3.png").unlink()
    with pytest.raises(ValueError, match=r"a3\.png: no mask"):
        load_dataset(root)
    save(root / "masks" / "a3.png", box())
    save(root / "masks" / "zzz.png", box())
    with pytest.raises(ValueError, match=r"zzz\.png: mask without an image"):
        load_dataset(root)
    spec = load_dataset(root, skip_bad=True)
    assert len(spec.samples) == 4 and [Path(p).name for p, _ in spec.skipped] == ["zzz.png"]


def test_mask_values_outside_classes(tmp_path):
    root = write_neu(tmp_path / "neu")
    m = np.zeros((24, 32), np.uint8)
    m[0, 0] = 7
    save(root / "ann_dir" / "test" / "000000.png", m)
    spec = load_dataset(root)
    bad = next(s for s in spec.samples if s.split == "test")
    with pytest.raises(ValueError, match=r"000000\.png: mask value 7 is outside the known classes 0\.\.3"):
        load_pair(bad, 1, 4)


def test_duplicated_stems(tmp_path):
    root = write_generic(tmp_path / "g")
    save(root / "images" / "a1.jpg", img())
    with pytest.raises(ValueError, match=r"duplicated image stem 'a1'"):
        load_dataset(root)
    spec = load_dataset(root, skip_bad=True)
    assert len(spec.samples) == 3  # neither copy of a1 is trusted
    assert len(spec.skipped) == 2  # the duplicate, and the mask a1.png now without an image


def test_empty_and_unknown_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError) as exc:
        detect_format(empty)
    for what in ("Class<k>", "kos<NN>", "MT_<Class>", "img_dir", "ground_truth", "images/ + masks/"):
        assert what in str(exc.value)
    (empty / "images").mkdir()
    (empty / "masks").mkdir()
    with pytest.raises(ValueError, match="no usable samples"):
        load_dataset(empty)
    with pytest.raises(ValueError, match="not a folder"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown format"):
        load_dataset(empty, format="coco")
    with pytest.raises(ValueError, match="does not look like format 'neu-seg'"):
        load_dataset(empty, format="neu-seg")


def test_dagm_labels_txt_problems(tmp_path):
    root = write_dagm(tmp_path / "d", classes=(1,))
    (root / "Class1" / "Train" / "Label" / "0002_label.PNG").unlink()
    with pytest.raises(ValueError, match=r"0002\.PNG: marked defective .* mask 0002_label\.PNG is missing"):
        load_dataset(root)
    save(root / "Class1" / "Train" / "9999.PNG", img())
    spec = load_dataset(root, skip_bad=True)
    reasons = " ".join(r for _, r in spec.skipped)
    assert "not listed" in reasons and "marked defective" in reasons
    assert len(spec.samples) == 5


def test_formats_tuple():
    assert FORMATS == ("dagm", "kolektor", "magnetic-tile", "neu-seg", "mvtec", "generic")
    with pytest.raises(ValueError, match="already registered"):
        register_format("dagm", detect=lambda root: False, layout="x")(lambda root, problems, allow: ([], []))
    assert FORMATS == ("dagm", "kolektor", "magnetic-tile", "neu-seg", "mvtec", "generic")
