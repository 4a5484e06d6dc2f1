"""Predictor: native-pixel coordinates after resize/pad/tile, training-identical preprocessing, bounded tiles,
streaming with bad files, the gate, reference mode, the ONNX backend and clear errors.

Geometry tests replace the network by a function whose output we control: logits +20 where the input pixel
is bright and -20 elsewhere (a "bright pixel detector"), so the expected defect is the bright rectangle drawn
into the image, and any error in resizing, padding, tiling or blending shows up as a shifted or missing box.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defectseg import checkpoint
from defectseg import config as C
from defectseg.data.dataset import resize_pair
from defectseg.data.io import write_png
from defectseg.export import export_checkpoint
from defectseg.models import create_model
from defectseg.predictor import Predictor, Result

BRIGHT = 200


def _save(
    path: Path,
    name: str = "cheapnet-s",
    size: int = 64,
    num_classes: int = 1,
    channels: int = 1,
    model_in: int | None = None,
    task: str = "segment",
    options: dict | None = None,
    reference: str | None = None,
    seed: int = 0,
) -> Path:
    """A checkpoint written by hand exactly as trainer.train writes one (random weights, non-trivial BN)."""
    cfg = C.RunConfig()
    cfg.model.name, cfg.model.options = name, options or {}
    cfg.data.size, cfg.data.channels, cfg.data.reference = size, channels, reference
    cfg.train.task = task
    torch.manual_seed(seed)
    model = create_model(name, in_channels=model_in or channels, num_classes=num_classes, **(options or {}))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    names = ["background", "defect"] if num_classes <= 2 else ["background"] + [f"d{i}" for i in range(1, num_classes)]
    return checkpoint.save_checkpoint(
        path,
        {
            "config": cfg.to_dict(),
            "num_classes": num_classes,
            "class_names": names,
            "task": task,
            "model": model.state_dict(),
        },
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("ckpt") / "seg.pt")


@pytest.fixture(scope="module")
def ckpt3(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("ckpt3") / "seg3.pt", num_classes=3)


def bright_detector(calls: list | None = None, num_classes: int = 1, cls: int = 1):
    """Fake logits: +20 where channel 0 is bright, -20 elsewhere (multi-class: class `cls` there, else 0)."""

    def logits(x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.uint8 and x.ndim == 4
        if calls is not None:
            calls.append(x.shape)
        hot = x[:, :1].astype(np.float32) > BRIGHT - 20
        if num_classes == 1:
            return np.where(hot, 20.0, -20.0).astype(np.float32)
        out = np.full((x.shape[0], num_classes, *x.shape[2:]), -20.0, np.float32)
        out[:, 0:1][~hot] = 20.0
        out[:, cls : cls + 1][hot] = 20.0
        return out

    return logits


def _scene(h: int, w: int, box: tuple[int, int, int, int], rgb: bool = False) -> np.ndarray:
    x1, y1, x2, y2 = box
    img = np.full((h, w), 60, np.uint8)
    img[y1:y2, x1:x2] = 255
    return np.repeat(img[:, :, None], 3, axis=2) if rgb else img


def _box(d: dict) -> tuple[int, int, int, int]:
    return d["x1"], d["y1"], d["x2"], d["y2"]


def _close(got: tuple, want: tuple, tol: int) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(got, want))


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(
    "size,box",
    [
        ((97, 203), (120, 30, 160, 50)),
        ((64, 64), (5, 7, 20, 30)),
        ((250, 31), (3, 200, 25, 240)),
        ((40, 300), (250, 0, 300, 12)),
    ],
)
@pytest.mark.parametrize("tile", [None, 64])
def test_defect_box_is_in_native_pixels(ckpt: Path, size, box, tile) -> None:
    pred = Predictor.from_checkpoint(ckpt, device="cpu", tile=tile, tile_overlap=16)
    pred.segmenter.logits = bright_detector()
    r = pred.predict(_scene(*size, box))
    assert r.size == size and r.prob.shape == size and r.mask.shape == size
    assert len(r.defects) == 1 and r.verdict == "NG"
    # Tiles run at native resolution: exact. Resize mode goes through the training size and back: 1-2 px.
    assert _close(_box(r.defects[0]), box, 0 if tile else 2), (r.defects[0], box)
    x1, y1, x2, y2 = _box(r.defects[0])
    if tile:
        assert r.mask[y1:y2, x1:x2].all()
    assert r.mask.sum() == r.defects[0]["area"]  # the mask holds exactly the defect's pixels


@pytest.mark.parametrize("tile", [None, 48])
def test_multiclass_box_class_and_probabilities(ckpt3: Path, tile) -> None:
    pred = Predictor.from_checkpoint(ckpt3, device="cpu", tile=tile, tile_overlap=8)
    pred.segmenter.logits = bright_detector(num_classes=3, cls=2)
    box = (33, 10, 61, 29)
    r = pred.predict(_scene(77, 90, box, rgb=True))
    assert r.prob.shape == (3, 77, 90)
    np.testing.assert_allclose(r.prob.sum(0), 1.0, atol=1e-5)
    (d,) = r.defects
    assert d["class"] == 2 and _close(_box(d), box, 0 if tile else 2)
    assert set(np.unique(r.mask)) == {0, 2}


def test_resize_mode_feeds_exactly_the_training_input(ckpt: Path) -> None:
    """The batch the model sees equals SegmentationDataset's resize, and the logits equal
    model(...) of that batch: the checkpoint's model takes the raw pixels and normalises them itself."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (150, 90), dtype=np.uint8)
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    seen = []
    real = pred.segmenter.logits
    pred.segmenter.logits = lambda x: (seen.append(x.copy()), real(x))[1]
    r = pred.predict(img)
    want, _ = resize_pair(img, np.zeros(img.shape, np.uint8), (64, 64))
    np.testing.assert_array_equal(seen[0][0, 0], want)

    model, cfg = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(ckpt))
    with torch.no_grad():
        logits = model(torch.from_numpy(want)[None, None])
    prob64 = torch.sigmoid(logits)[0, 0].numpy()
    # back to native size: bilinear (the image was shrunk in one side, grown in the other)
    import cv2

    np.testing.assert_allclose(r.prob, cv2.resize(prob64, (90, 150), interpolation=cv2.INTER_LINEAR), atol=1e-5)


def test_tiling_bounds_every_forward_and_blends_without_seams(ckpt: Path) -> None:
    calls: list = []
    pred = Predictor.from_checkpoint(ckpt, device="cpu", tile=256, tile_overlap=32, batch_size=8)
    pred.segmenter.logits = bright_detector(calls)
    box = (700, 200, 1100, 1300)  # spans several tile seams in both directions
    r = pred.predict(_scene(1500, 2000, box))
    assert calls and all(s[2] <= 256 and s[3] <= 256 and s[0] <= 8 for s in calls)
    n_windows = sum(s[0] for s in calls)
    assert 8 * 6 <= n_windows <= 10 * 8  # ~ (2000/224) x (1500/224) windows, no more
    (d,) = r.defects
    assert _box(d) == box and d["area"] == 400 * 1100
    # The weighted average of identical per-window answers is that answer: no seams anywhere.
    inside = np.zeros(r.prob.shape, bool)
    inside[200:1300, 700:1100] = True
    np.testing.assert_allclose(r.prob[inside], 1.0, atol=1e-6)
    np.testing.assert_allclose(r.prob[~inside], 0.0, atol=1e-6)


def test_tile_blending_averages_overlapping_windows(ckpt: Path) -> None:
    """Windows that disagree (each answers its own constant) blend to values between them, each pixel a convex
    combination: the map stays within [min, max] of the windows, and a window's centre keeps its own value."""
    pred = Predictor.from_checkpoint(ckpt, device="cpu", tile=64, tile_overlap=32, batch_size=64)
    counter = iter(range(10_000))
    values: list[float] = []

    def logits(x):
        out = np.empty((x.shape[0], 1, *x.shape[2:]), np.float32)
        for i in range(len(x)):
            v = next(counter) % 5 - 2.0
            values.append(v)
            out[i] = v
        return out

    pred.segmenter.logits = logits
    r = pred.predict(np.zeros((160, 160), np.uint8))
    lo, hi = 1 / (1 + np.exp(2.0)), 1 / (1 + np.exp(-2.0))
    assert r.prob.min() >= lo - 1e-6 and r.prob.max() <= hi + 1e-6
    assert r.prob[0, 0] == pytest.approx(1 / (1 + np.exp(-values[0])), abs=1e-6)  # corner: one window only
    assert len(np.unique(np.round(r.prob, 4))) > 5  # overlaps really mix


def test_tile_smaller_than_multiple_and_overlap_errors(ckpt: Path) -> None:
    with pytest.raises(ValueError, match="size multiple 16"):
        Predictor.from_checkpoint(ckpt, device="cpu", tile=8)
    with pytest.raises(ValueError, match="tile_overlap"):
        Predictor.from_checkpoint(ckpt, device="cpu", tile=64, tile_overlap=64)


def test_min_area_removes_small_components_from_mask_too(ckpt: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, device="cpu", tile=64, min_area=10)
    pred.segmenter.logits = bright_detector()
    img = _scene(50, 50, (10, 10, 20, 20))
    img[40:42, 40:42] = 255  # 4 pixels: below min_area
    r = pred.predict(img)
    assert [(_box(d), d["area"]) for d in r.defects] == [((10, 10, 20, 20), 100)]
    assert r.mask.sum() == 100 and r.mask[40:42, 40:42].sum() == 0


# ----------------------------------------------------------------------------- streaming
def test_predict_paths_streams_in_chunks_and_reports_bad_files(ckpt: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        write_png(p, _scene(40 + i, 50, (5, 5, 10 + i, 10)))
        paths.append(p)
    good = (tmp_path / "img0.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.png").write_text("not an image")
    order = [
        paths[0],
        tmp_path / "trunc.png",
        paths[1],
        paths[2],
        tmp_path / "text.png",
        paths[3],
        paths[4],
        tmp_path / "missing.png",
    ]
    calls: list = []
    pred = Predictor.from_checkpoint(ckpt, device="cpu", batch_size=2)
    pred.segmenter.logits = bright_detector(calls)
    results = list(pred.predict_paths(order))
    assert [r.path for r in results] == [str(p) for p in order]
    bad = {Path(r.path).name: r for r in results if r.error}
    assert set(bad) == {"trunc.png", "text.png", "missing.png"}
    assert all(r.verdict == "ERROR" and r.mask is None and r.size is None for r in bad.values())
    assert "trunc.png" in bad["trunc.png"].error
    assert all(s[0] <= 2 for s in calls) and sum(s[0] for s in calls) == 5
    for i, r in enumerate(r for r in results if not r.error):
        assert r.size == (40 + i, 50) and r.verdict == "NG" and r.seconds > 0
        assert _close(_box(r.defects[0]), (5, 5, 10 + i, 10), 2)


def test_overlapped_pipeline_gives_the_serial_results_and_files(ckpt: Path, tmp_path: Path) -> None:
    """Reading, post-processing and writing in threads change nothing but the time: same results in the same
    order, byte-identical files; a consumer that stops early leaves no thread behind."""
    import threading

    from defectseg.outputs import ResultWriter

    paths = []
    for i in range(7):
        write_png(tmp_path / "in" / f"img{i}.png", _scene(40 + i, 50, (5, 5, 10 + i, 10)))
        paths.append(tmp_path / "in" / f"img{i}.png")
    paths.insert(3, tmp_path / "in" / "missing.png")
    pred = Predictor.from_checkpoint(ckpt, device="cpu", batch_size=2)
    pred.segmenter.logits = bright_detector()
    outputs = {}
    for overlap in (False, True):
        pred.overlap = overlap
        out = tmp_path / f"out-{overlap}"
        with ResultWriter(out, background=overlap) as w:
            for r in pred.predict_paths(paths):
                w.write(r)
        outputs[overlap] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
        records = [json.loads(line) for line in outputs[overlap].pop("results.jsonl").splitlines()]
        outputs[overlap]["records"] = [{k: v for k, v in rec.items() if k != "seconds"} for rec in records]
    assert outputs[True] == outputs[False] and len(outputs[True]) == 2 + 2 * 7
    assert [rec["error"] is not None for rec in outputs[True]["records"]] == [False] * 3 + [True] + [False] * 4
    before = threading.active_count()
    for _ in pred.predict_paths(paths):
        break
    assert threading.active_count() <= before


def test_read_ahead_raises_the_producer_s_error_in_order() -> None:
    from defectseg.predictor import _read_ahead

    def items():
        yield 1
        yield 2
        raise RuntimeError("disk gone")

    got = []
    with pytest.raises(RuntimeError, match="disk gone"):
        for it in _read_ahead(items()):
            got.append(it)
    assert got == [1, 2]


def test_predict_arrays_rejects_non_uint8(ckpt: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        pred.predict_arrays([np.zeros((10, 10), np.float32)])


# ----------------------------------------------------------------------------- gate
def test_gate_skips_segmenter_for_ok_images(ckpt: Path, tmp_path: Path) -> None:
    gate = _save(tmp_path / "gate.pt", name="classifier-vgg", task="classify", options={"widths": [4, 8]})
    pred = Predictor.from_checkpoint(ckpt, device="cpu", gate=gate, gate_threshold=0.5)
    # The gate says "defective" (logit +3) for images with any bright pixel, else logit -3.
    pred.gate.logits = lambda x: np.where((x.reshape(len(x), -1) > BRIGHT - 20).any(1), 3.0, -3.0)[:, None]
    calls: list = []
    pred.segmenter.logits = bright_detector(calls)
    imgs = [_scene(64, 64, (10, 10, 20, 20)), np.full((70, 64), 60, np.uint8), _scene(64, 80, (40, 40, 50, 60))]
    rs = pred.predict_arrays(imgs)
    assert sum(s[0] for s in calls) == 2  # the segmenter never saw the OK image
    assert [r.verdict for r in rs] == ["NG", "OK", "NG"]
    assert rs[1].defects == [] and rs[1].mask.shape == (70, 64) and not rs[1].mask.any()
    assert [round(r.gate_probability, 4) for r in rs] == [
        round(1 / (1 + np.exp(-3)), 4),
        round(1 / (1 + np.exp(3)), 4),
        round(1 / (1 + np.exp(-3)), 4),
    ]


def test_gate_must_be_a_classifier_and_main_model_a_segmenter(ckpt: Path, tmp_path: Path) -> None:
    gate = _save(tmp_path / "gate.pt", name="classifier-vgg", task="classify", options={"widths": [4, 8]})
    with pytest.raises(ValueError, match="--task classify"):
        Predictor.from_checkpoint(ckpt, device="cpu", gate=ckpt)
    with pytest.raises(ValueError, match="--gate"):
        Predictor.from_checkpoint(gate, device="cpu")


def test_real_gate_network_runs(ckpt: Path, tmp_path: Path) -> None:
    gate = _save(tmp_path / "gate.pt", name="classifier-vgg", task="classify", options={"widths": [4, 8]})
    pred = Predictor.from_checkpoint(ckpt, device="cpu", gate=gate, gate_threshold=0.0)
    rs = pred.predict_arrays([np.full((33, 47), 100, np.uint8), np.full((64, 64, 3), 30, np.uint8)])
    assert all(0.0 <= r.gate_probability <= 1.0 and r.prob.shape == r.size for r in rs)


# ----------------------------------------------------------------------------- reference mode
@pytest.fixture(scope="module")
def ref_ckpt(tmp_path_factory) -> Path:
    # data.channels counts the image's channels; the model takes image + reference (2 channels)
    return _save(tmp_path_factory.mktemp("ref") / "ref.pt", channels=1, model_in=2, reference="golden.png")


def difference_detector(calls: list | None = None):
    """Fake 2-channel logits: defect where the image (channel 0) differs from the reference (channel 1)."""

    def logits(x: np.ndarray) -> np.ndarray:
        assert x.shape[1] == 2
        if calls is not None:
            calls.append(x.shape)
        diff = np.abs(x[:, :1].astype(np.float32) - x[:, 1:2].astype(np.float32)) > 60
        return np.where(diff, 20.0, -20.0).astype(np.float32)

    return logits


@pytest.mark.parametrize("tile", [None, 64])
def test_reference_mode_finds_only_differences(ref_ckpt: Path, tmp_path: Path, tile) -> None:
    golden = np.full((90, 130), 80, np.uint8)
    golden[10:30, 10:40] = 250  # a bright feature of the product: present in both, not a defect
    ref_path = tmp_path / "golden.png"
    write_png(ref_path, golden)
    with pytest.raises(ValueError, match="--reference"):
        Predictor.from_checkpoint(ref_ckpt, device="cpu")
    pred = Predictor.from_checkpoint(ref_ckpt, device="cpu", reference=ref_path, tile=tile)
    pred.segmenter.logits = difference_detector()
    img = golden.copy()
    img[60:80, 90:120] = 250  # the defect
    (d,) = pred.predict(img).defects
    assert _close(_box(d), (90, 60, 120, 80), 0 if tile else 2)


def test_reference_is_resized_to_the_image(ref_ckpt: Path, tmp_path: Path) -> None:
    golden = np.full((45, 65), 80, np.uint8)  # half the image's size
    write_png(tmp_path / "g.png", golden)
    pred = Predictor.from_checkpoint(ref_ckpt, device="cpu", reference=tmp_path / "g.png", tile=64)
    pred.segmenter.logits = difference_detector()
    img = np.full((90, 130), 80, np.uint8)
    img[5:15, 100:125] = 250
    (d,) = pred.predict(img).defects
    assert _box(d) == (100, 5, 125, 15)
    real = Predictor.from_checkpoint(ref_ckpt, device="cpu", reference=tmp_path / "g.png")
    assert real.predict(img).prob.shape == (90, 130)  # the real 2-channel network runs


def test_reference_for_a_plain_model_is_refused(ckpt: Path, tmp_path: Path) -> None:
    write_png(tmp_path / "g.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="drop --reference"):
        Predictor.from_checkpoint(ckpt, device="cpu", reference=tmp_path / "g.png")


# ----------------------------------------------------------------------------- ONNX backend
@pytest.fixture(scope="module")
def onnx_dir(ckpt: Path, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("onnx")
    rep = export_checkpoint(ckpt, d / "model.onnx")
    assert rep.ok and rep.max_abs_diff < 1e-4
    export_checkpoint(ckpt, d / "static.onnx", dynamic=False)
    return d


@pytest.mark.parametrize("tile", [None, 32])
def test_onnx_backend_matches_torch(ckpt: Path, onnx_dir: Path, tile) -> None:
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (70, 45), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    pt = Predictor.from_checkpoint(ckpt, device="cpu", backend="torch", tile=tile, tile_overlap=8)
    ox = Predictor.from_checkpoint(onnx_dir / "model.onnx", device="cpu", tile=tile, tile_overlap=8)
    assert ox.segmenter.backend == "onnxruntime" and ox.segmenter.size_multiple == 16
    for a, b in zip(pt.predict_arrays(imgs), ox.predict_arrays(imgs)):
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-5)


def test_onnx_file_normalises_by_itself(ckpt: Path, onnx_dir: Path) -> None:
    """The exported graph takes raw pixel values: ONNX Runtime fed uint8 pixels (and only those) gives the
    checkpoint model's logits to 1e-4; a graph from before (normalisation outside) is refused by name."""
    import json

    import onnx

    from defectseg.export import ONNX_CONFIG_KEY, OnnxModel

    pixels = np.random.default_rng(5).integers(0, 256, (2, 1, 48, 64), dtype=np.uint8)
    model, _ = checkpoint.model_from_checkpoint(checkpoint.load_checkpoint(ckpt))
    with torch.no_grad():
        want = model(torch.from_numpy(pixels)).numpy()
    got = OnnxModel(onnx_dir / "model.onnx")(pixels)
    assert np.abs(got - want).max() <= 1e-4
    proto = onnx.load(str(onnx_dir / "model.onnx"))
    entry = next(p for p in proto.metadata_props if p.key == ONNX_CONFIG_KEY)
    entry.value = json.dumps({**json.loads(entry.value), "format": "defectseg-onnx-v1"})
    onnx.save(proto, str(onnx_dir / "v1.onnx"))
    with pytest.raises(ValueError, match="defectseg-onnx-v1.*re-export"):
        Predictor.from_checkpoint(onnx_dir / "v1.onnx")


def test_version_1_checkpoint_with_bare_network_weights_loads(ckpt: Path, tmp_path: Path) -> None:
    """Checkpoints written before the model carried its normalisation (format v1: the bare network's
    weights) load and predict exactly as those of today."""
    ck = checkpoint.load_checkpoint(ckpt)
    state = checkpoint.model_from_checkpoint(ck)[0].state_dict()
    assert {"scale", "shift"} <= set(state) and all(k.startswith("net.") for k in state if k not in ("scale", "shift"))
    checkpoint.save_checkpoint(tmp_path / "v2.pt", {**ck, "model": state})
    v1 = {
        **ck,
        "format": "defectseg-checkpoint-v1",
        "model": {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")},
    }
    torch.save(v1, tmp_path / "v1.pt")
    img = np.random.default_rng(6).integers(0, 256, (40, 52), dtype=np.uint8)
    a = Predictor.from_checkpoint(tmp_path / "v2.pt", device="cpu").predict(img)
    b = Predictor.from_checkpoint(tmp_path / "v1.pt", device="cpu").predict(img)
    np.testing.assert_array_equal(a.prob, b.prob)
    torch.save({**ck, "format": "defectseg-checkpoint-v9"}, tmp_path / "v9.pt")
    with pytest.raises(ValueError, match="v9.*upgrade"):
        Predictor.from_checkpoint(tmp_path / "v9.pt")


def test_static_onnx_runs_batches_through_its_fixed_shape(ckpt: Path, onnx_dir: Path) -> None:
    pt = Predictor.from_checkpoint(ckpt, device="cpu", batch_size=3)
    ox = Predictor.from_checkpoint(onnx_dir / "static.onnx", device="cpu", batch_size=3)
    imgs = [np.full((50, 60), v, np.uint8) for v in (10, 120, 240)]
    for a, b in zip(pt.predict_arrays(imgs), ox.predict_arrays(imgs)):
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-5)
    with pytest.raises(ValueError, match="--dynamic"):
        Predictor.from_checkpoint(onnx_dir / "static.onnx", device="cpu", tile=64)


def test_malformed_onnx_and_checkpoint_errors(ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(ValueError, match="bad.onnx"):
        Predictor.from_checkpoint(bad)
    from defectseg.export import export_onnx

    bare = export_onnx(create_model("cheapnet-s"), tmp_path / "bare.onnx", (1, 1, 32, 32))
    with pytest.raises(ValueError, match="defectseg export"):
        Predictor.from_checkpoint(bare)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="trunc.pt"):
        Predictor.from_checkpoint(trunc)
    with pytest.raises(ValueError, match="export it first"):
        Predictor.from_checkpoint(ckpt, backend="onnxruntime")
    with pytest.raises(ValueError, match="CUDA"):
        Predictor.from_checkpoint(ckpt, device="cpu", dtype="bf16")
    with pytest.raises(ValueError, match="does not exist"):
        Predictor.from_checkpoint(tmp_path / "nope.pt")


def test_result_json_record(ckpt: Path) -> None:
    pred = Predictor.from_checkpoint(ckpt, device="cpu")
    pred.segmenter.logits = bright_detector()
    rec = pred.predict(_scene(30, 40, (1, 2, 9, 8))).to_json()
    assert (rec["width"], rec["height"], rec["verdict"], rec["error"]) == (40, 30, "NG", None)
    assert set(rec["defects"][0]) == {"x1", "y1", "x2", "y2", "area", "score", "class"}
    assert isinstance(Result(None, None).to_json(), dict)


def test_writer_multiclass_mask_ids_and_folder_walk(ckpt3: Path, tmp_path: Path) -> None:
    from defectseg.data.io import find_images, read_image
    from defectseg.outputs import write_results

    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / ".hidden").mkdir()
    write_png(src / "a" / "x.TIF", _scene(30, 40, (2, 3, 12, 9)))
    write_png(src / "b.png", _scene(30, 40, (20, 10, 30, 20)))
    write_png(src / ".hidden" / "c.png", _scene(30, 40, (0, 0, 5, 5)))
    (src / "d.txt").write_text("x")
    paths, _ = find_images([src], recursive=True)
    assert paths == [src / "a" / "x.TIF", src / "b.png"]
    pred = Predictor.from_checkpoint(ckpt3, device="cpu")
    pred.segmenter.logits = bright_detector(num_classes=3, cls=2)
    assert write_results(pred.predict_paths(paths + [src / "d.txt"]), tmp_path / "out") == 2
    mask = read_image(tmp_path / "out" / "x_mask.png")
    assert set(np.unique(mask)) == {0, 2}  # class ids, not 0/255
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[-1].split(",")[3] == "ERROR"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,channels_last", [(None, False), ("bf16", True), ("fp16", False)])
def test_cuda_fast_paths_agree_with_cpu(ckpt: Path, dtype, channels_last) -> None:
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (300, 200), dtype=np.uint8) for _ in range(3)]
    cpu = Predictor.from_checkpoint(ckpt, device="cpu", tile=128, tile_overlap=16)
    gpu = Predictor.from_checkpoint(
        ckpt, device="cuda", dtype=dtype, channels_last=channels_last, tile=128, tile_overlap=16
    )
    tol = 1e-4 if dtype is None else 3e-2  # bf16 keeps 8 bits of mantissa
    for a, b in zip(cpu.predict_arrays(imgs), gpu.predict_arrays(imgs)):
        np.testing.assert_allclose(a.prob, b.prob, atol=tol)
