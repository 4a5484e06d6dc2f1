"""`defectseg watch IN_DIR --checkpoint X --out OUT_DIR`: inspect each image dropped into a folder.

For lines that drop files instead of calling a service. Every poll lists IN_DIR (as predict does: images only,
masks and the output folder skipped) and takes each image whose version, (size, modification time, change time),
has no record yet in OUT_DIR/results.jsonl and has not changed for `settle` seconds (a file still being copied is
left for the next poll). It writes the same records, masks and overlays as `predict`, appending to
results.jsonl/csv, each record with the version it read ("file": [bytes, mtime_ns, ctime_ns]).

So a file is inspected again when it changes: one that failed (stalled mid-write, a zero-byte placeholder filled
later, unreadable until `chmod`, which changes its ctime) is retried once it is rewritten or made readable, and an
image replaced under the same name is inspected anew; an unchanged failure is not retried every poll. The records
are flushed to disk after each batch, so after a restart (a crash, a reboot) nothing already listed is inspected
again and nothing dropped meanwhile is skipped. Records of earlier versions without "file" count as done by path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from .data.io import find_images
from .outputs import Result, ResultWriter
from .predictor import Predictor


def watch(
    predictor: Predictor,
    in_dir: str | Path,
    out_dir: str | Path,
    interval: float = 1.0,
    settle: float = 1.0,
    once: bool = False,
    overlays: bool = True,
    on_result: Callable[[Result], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Poll `in_dir` every `interval` seconds until `should_stop()` (or after one pass with `once`); returns the
    number of images inspected. `on_result` is called with each Result after it is written."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    for name, v in (("interval", interval), ("settle", settle)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"--{name} must be a number of seconds >= 0, got {v}")
    if not in_dir.is_dir():
        raise ValueError(f"{in_dir} is not a folder; give the folder the line drops images into")
    if in_dir.resolve() == out_dir.resolve():
        raise ValueError(
            "the output folder must not be the watched folder (masks would be read back as input); choose another --out"
        )
    seen: dict[str, tuple[int, int, int]] = {}  # path -> its version at the poll that first saw it
    n = 0
    with ResultWriter(out_dir, overlays=overlays, append=True) as writer:
        # path -> the version its last record read (None: a record from before versions were kept)
        done = {str(rec.get("path")): _version(rec.get("file")) for rec in writer.previous}
        while True:
            ready: list[tuple[Path, tuple[int, int, int]]] = []
            now = time.time()
            for p in find_images([in_dir], exclude=out_dir)[0]:
                try:
                    st = p.stat()
                except OSError:
                    continue  # removed between listing and stat
                version = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                key = str(p)
                if key in done and done[key] in (None, version):
                    continue
                if now - st.st_mtime >= settle or seen.get(key) == version:
                    ready.append((p, version))
                else:
                    seen[key] = version
            for (p, version), r in zip(ready, predictor.predict_paths([p for p, _ in ready])):
                writer.write(r, file=list(version))
                done[str(p)] = version
                n += 1
                if on_result is not None:
                    on_result(r)
            writer.flush()
            if once or should_stop():
                return n
            time.sleep(interval)


def _version(raw: object) -> tuple[int, int, int] | None:
    """A record's "file" entry as a version tuple (None when absent or not three integers)."""
    if isinstance(raw, list) and len(raw) == 3 and all(isinstance(x, int) for x in raw):
        return (raw[0], raw[1], raw[2])
    return None
