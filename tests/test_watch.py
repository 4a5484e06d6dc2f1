"""`defectseg watch`: each image dropped into the folder is inspected once, across restarts; files still being
written wait; a torn results.jsonl line (a crash) is dropped, not appended to."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from test_infer import _save, _scene, bright_detector  # a checkpoint as training writes one; the fake network
from typer.testing import CliRunner

from defectseg.cli import app
from defectseg.data.io import write_png
from defectseg.predictor import Predictor
from defectseg.watch import watch


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    pred = Predictor.from_checkpoint(_save(tmp_path_factory.mktemp("watch") / "seg.pt"), device="cpu", backend="torch")
    pred.segmenter.logits = bright_detector()
    return pred


def _drop(folder: Path, *names: str) -> None:
    for n in names:
        write_png(folder / n, _scene(40, 50, (5, 5, 15, 12)))


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_each_image_is_inspected_once_across_restarts(predictor, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _drop(inbox, "a.png", "b.png", "c.png")
    assert watch(predictor, inbox, out, settle=0, once=True) == 3
    _drop(inbox, "d.png", "e.png")
    assert watch(predictor, inbox, out, settle=0, once=True) == 2  # a restart: only the new ones
    assert watch(predictor, inbox, out, settle=0, once=True) == 0
    recs = _records(out)
    assert sorted(Path(r["path"]).name for r in recs) == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert all(r["verdict"] == "NG" and (out / r["mask"]).is_file() for r in recs)
    assert (out / "results.csv").read_text().count("path,width") == 1  # one header


def test_a_file_still_being_written_waits_for_the_next_poll(predictor, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _drop(inbox, "old.png", "new.png")
    past = time.time() - 60
    os.utime(inbox / "old.png", (past, past))
    assert watch(predictor, inbox, out, settle=30, once=True) == 1  # new.png changed a moment ago
    assert [Path(r["path"]).name for r in _records(out)] == ["old.png"]
    polls = iter([False, True])
    n = watch(predictor, inbox, out, interval=0.01, settle=30, should_stop=lambda: next(polls))
    assert n == 1 and len(_records(out)) == 2  # unchanged over one poll interval: taken at the second poll


def test_a_torn_last_record_is_dropped_and_its_image_inspected_again(predictor, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _drop(inbox, "a.png", "b.png")
    watch(predictor, inbox, out, settle=0, once=True)
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # a crash in the middle of b's record
    assert watch(predictor, inbox, out, settle=0, once=True) == 1
    assert sorted(Path(r["path"]).name for r in _records(out)) == ["a.png", "b.png"]


def test_watch_cli_once_and_refusals(predictor, tmp_path):
    ckpt = predictor.segmenter.source
    inbox = tmp_path / "in"
    inbox.mkdir()
    _drop(inbox, "a.png")
    os.utime(inbox / "a.png", (time.time() - 10, time.time() - 10))
    res = CliRunner().invoke(
        app, ["watch", str(inbox), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--once", "--device", "cpu"]
    )
    assert res.exit_code == 0 and "1 images inspected" in res.output, res.output
    res = CliRunner().invoke(app, ["watch", str(inbox), "--checkpoint", str(ckpt), "--out", str(inbox), "--once"])
    assert res.exit_code == 2 and "must not be the watched folder" in res.output.replace("\n", " ")


def test_a_failed_file_is_retried_when_it_changes_and_not_before(predictor, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    (inbox / "placeholder.png").write_bytes(b"")  # a zero-byte placeholder, filled later
    png = inbox / "stalled.png"
    _drop(inbox, "stalled.png")
    full = png.read_bytes()
    png.write_bytes(full[: len(full) // 2])  # a copy that stalled mid-write
    assert watch(predictor, inbox, out, settle=0, once=True) == 2
    assert [r["verdict"] for r in _records(out)] == ["ERROR", "ERROR"]
    assert watch(predictor, inbox, out, settle=0, once=True) == 0  # unchanged: not retried every poll
    _drop(inbox, "placeholder.png")
    png.write_bytes(full)  # the copy completes
    assert watch(predictor, inbox, out, settle=0, once=True) == 2
    latest = {Path(r["path"]).name: r for r in _records(out)}  # the last record of each path
    assert [latest[n]["verdict"] for n in ("placeholder.png", "stalled.png")] == ["NG", "NG"]
    assert all(isinstance(r["file"], list) and len(r["file"]) == 3 for r in _records(out))
    _drop(inbox, "replaced.png")
    assert watch(predictor, inbox, out, settle=0, once=True) == 1
    past = time.time_ns() - 100 * 10**9
    os.utime(inbox / "replaced.png", ns=(past, past))  # another version under the same name
    assert watch(predictor, inbox, out, settle=0, once=True) == 1


@pytest.mark.parametrize("option", [["--interval", "-1"], ["--interval", "nan"], ["--settle", "-2"]])
def test_bad_watch_timings_are_refused_before_the_first_pass(predictor, tmp_path, option):
    inbox = tmp_path / "in"
    inbox.mkdir()
    ckpt = _save(tmp_path / "m.pt")
    res = CliRunner().invoke(
        app, ["watch", str(inbox), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), *option]
    )
    assert res.exit_code != 0 and f"{option[0]} must be a number of seconds >= 0" in " ".join(res.output.split())
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_sigterm_mid_predict_leaves_agreeing_files_and_marks_the_run(predictor, tmp_path, monkeypatch):
    import csv
    import signal

    from defectseg.predictor import Predictor as P

    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _drop(inbox, *(f"i{k:03d}.png" for k in range(40)))
    real = P.predict_paths

    def then_sigterm(self, paths):  # `systemctl stop` arriving after 21 images
        for k, r in enumerate(real(predictor, paths)):
            if k == 21:
                os.kill(os.getpid(), signal.SIGTERM)
            yield r

    monkeypatch.setattr(P, "from_checkpoint", classmethod(lambda cls, *a, **k: predictor))
    monkeypatch.setattr(P, "predict_paths", then_sigterm)
    res = CliRunner().invoke(app, ["predict", str(inbox), "--checkpoint", "x.pt", "--out", str(out), "-q"])
    assert res.exit_code == 130 and "stopped after 21 of 40 images" in " ".join(res.output.split())
    assert (out / "INCOMPLETE.txt").is_file()
    recs = _records(out)
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(recs) == 21 and [r["path"] for r in recs] == list(dict.fromkeys(r["path"] for r in rows))
    assert all((out / r["mask"]).is_file() and (out / r["overlay"]).is_file() for r in recs)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back
    monkeypatch.setattr(P, "predict_paths", real)
    _ok = CliRunner().invoke(app, ["predict", str(inbox), "--checkpoint", "x.pt", "--out", str(out), "--overwrite"])
    assert _ok.exit_code == 0 and not (out / "INCOMPLETE.txt").exists() and len(_records(out)) == 40


def test_a_restart_rebuilds_the_csv_from_the_records(predictor, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    _drop(inbox, "a.png", "b.png")
    watch(predictor, inbox, out, settle=0, once=True)
    whole = (out / "results.csv").read_text()
    (out / "results.csv").write_text(whole.splitlines()[0] + "\n")  # killed after the records, before the rows
    _drop(inbox, "c.png")
    watch(predictor, inbox, out, settle=0, once=True)
    text = (out / "results.csv").read_text()
    assert text.startswith(whole) and text.count("c.png") == 1 and text.count("path,width") == 1
