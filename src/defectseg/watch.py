"""`defectseg watch IN_DIR --checkpoint X --out OUT_DIR`: inspect each image dropped into a folder, once.

For lines that drop files instead of calling a service. Every poll lists IN_DIR (as predict does: images only,
masks and the output folder skipped), takes the images not yet in OUT_DIR/results.jsonl whose size and time stamp
have not changed for `settle` seconds (a file still being copied is left for the next poll), and writes the same
records, masks and overlays as `predict`, appending to results.jsonl/csv. The records are flushed to disk after
each batch, so after a restart (a crash, a reboot) nothing already listed is inspected again and nothing dropped
meanwhile is skipped. An image whose mask was written but whose record was not (a crash between the two) is
inspected again; it is never lost.
"""

from __future__ import annotations

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
    if not in_dir.is_dir():
        raise ValueError(f"{in_dir} is not a folder; give the folder the line drops images into")
    if in_dir.resolve() == out_dir.resolve():
        raise ValueError(
            "the output folder must not be the watched folder (masks would be read back as input); choose another --out"
        )
    seen: dict[str, tuple[int, float]] = {}  # path -> (size, mtime) at the poll that first saw it unchanged
    n = 0
    with ResultWriter(out_dir, overlays=overlays, append=True) as writer:
        while True:
            ready = []
            now = time.time()
            for p in find_images([in_dir], exclude=out_dir)[0]:
                if str(p) in writer.done:
                    continue
                try:
                    st = p.stat()
                except OSError:
                    continue  # removed between listing and stat
                if now - st.st_mtime >= settle or seen.get(str(p)) == (st.st_size, st.st_mtime):
                    ready.append(p)
                else:
                    seen[str(p)] = (st.st_size, st.st_mtime)
            for r in predictor.predict_paths(ready):
                writer.write(r)
                writer.done.add(str(r.path))
                n += 1
                if on_result is not None:
                    on_result(r)
            writer.flush()
            if once or should_stop():
                return n
            time.sleep(interval)
