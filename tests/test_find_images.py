"""find_images: files and folders -> the images to predict, and every skipped entry with its reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from defectseg.data import MASK_SUFFIXES, find_images
from defectseg.data.formats import MASK_DIR_NAMES


def save(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(path)
    return path


def names(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def reasons(skipped: list[tuple[Path, str]]) -> dict[str, str]:
    return {p.name: r for p, r in skipped}


def write_dagm_class(d: Path) -> Path:
    """A DAGM Train/ folder: 3 images and Label/ with Labels.txt and a mask."""
    for j in (3, 1, 2):
        save(d / f"000{j}.PNG")
    save(d / "Label" / "0002_label.PNG")
    (d / "Label" / "Labels.txt").write_text("1\n2\t1\t0002.PNG\t0\t0002_label.PNG\n")
    return d


def test_dagm_folder_skips_label_folder(tmp_path):
    d = write_dagm_class(tmp_path / "Train")
    images, skipped = find_images([d])
    assert names(images) == ["0001.PNG", "0002.PNG", "0003.PNG"]
    assert reasons(skipped) == {"Label": "mask/label folder"}
    images, skipped = find_images([d], recursive=True)
    assert names(images) == ["0001.PNG", "0002.PNG", "0003.PNG"]
    assert reasons(skipped) == {"Label": "mask/label folder"}


def test_sub_folders_only_with_recursive(tmp_path):
    save(tmp_path / "b.png")
    save(tmp_path / "a" / "x.jpg")
    save(tmp_path / "a" / "deeper" / "y.TIF")
    images, skipped = find_images([str(tmp_path)])  # str and Path both accepted
    assert images == [tmp_path / "b.png"]
    assert skipped == [(tmp_path / "a", "sub-folder (pass --recursive)")]
    images, skipped = find_images([tmp_path], recursive=True)
    assert images == [tmp_path / "a" / "deeper" / "y.TIF", tmp_path / "a" / "x.jpg", tmp_path / "b.png"]
    assert skipped == []


def test_explicit_files_are_kept_as_given(tmp_path):
    mask = save(tmp_path / "a_mask.png")
    missing, text = tmp_path / "nope.png", tmp_path / "notes.txt"
    text.write_text("x")
    images, skipped = find_images([mask, missing, text])
    assert images == [mask, missing, text] and skipped == []


def test_masks_hidden_and_non_images(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "a_mask.png")
    save(tmp_path / "b_GT.bmp")
    save(tmp_path / "c_Label.jpg")
    save(tmp_path / ".hidden.png")
    (tmp_path / ".cache").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "README").write_text("x")
    images, skipped = find_images([tmp_path], recursive=True)
    assert images == [tmp_path / "a.png"]
    assert reasons(skipped) == {
        "a_mask.png": "mask/label file",
        "b_GT.bmp": "mask/label file",
        "c_Label.jpg": "mask/label file",
        "notes.txt": "not an image (suffix .txt)",
        "README": "not an image (suffix none)",
    }


def test_suffix_any_case_and_order(tmp_path):
    for n in ("c.PNG", "a.jpeg", "b.Tiff", "d.webp"):
        save(tmp_path / n)
    images, _ = find_images([tmp_path])
    assert names(images) == ["a.jpeg", "b.Tiff", "c.PNG", "d.webp"]


def test_mask_folders_skipped_with_recursive(tmp_path):
    save(tmp_path / "images" / "a.png")
    for n in (*MASK_DIR_NAMES, "Label", "MASKS"):
        save(tmp_path / n / "a.png")
    images, skipped = find_images([tmp_path], recursive=True)
    assert images == [tmp_path / "images" / "a.png"]
    assert sorted(p.name for p, _ in skipped) == sorted([*MASK_DIR_NAMES, "Label", "MASKS"])
    assert {r for _, r in skipped} == {"mask/label folder"}
    assert set(MASK_SUFFIXES) == {"_mask", "_label", "_gt"}


def test_given_twice_kept_once(tmp_path):
    a = save(tmp_path / "a.png")
    images, skipped = find_images([tmp_path, a, tmp_path])
    assert images == [a]
    assert [r for _, r in skipped] == ["given twice (kept once)", "folder given twice (searched once)"]


def test_symlink_loop_searched_once(tmp_path):
    save(tmp_path / "d" / "a.png")
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d", target_is_directory=True)
    images, skipped = find_images([tmp_path / "d"], recursive=True)
    assert images == [tmp_path / "d" / "a.png"]
    assert skipped == [(tmp_path / "d" / "loop", "folder already searched (symbolic link)")]
