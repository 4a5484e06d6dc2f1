"""Load test of `defectseg serve` on loopback: N concurrent clients POST one image each, back to back, for T seconds.

Reports requests/s, p50/p99 latency, error count, the mean network batch and the server's resident memory before and
after (read from /proc, so the server must run on this machine). Used by tests/test_serve.py (a few seconds) and
for docs/service.md:

    defectseg serve --checkpoint model.pt --port 8000 &
    python benchmarks/load.py --url http://127.0.0.1:8000 --clients 8 --seconds 30 --size 512 --pid $!
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import statistics
import threading
import time
import urllib.parse
import uuid

import numpy as np
from PIL import Image


def png_bytes(size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 200, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def multipart(image: bytes, name: str = "part.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def scrape(url: str, key: str | None) -> dict[str, float]:
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", "/metrics", headers={"X-API-Key": key} if key else {})
    text = conn.getresponse().read().decode()
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#") and "{" not in line
    }


def load(
    url: str,
    clients: int,
    seconds: float,
    size: int = 512,
    key: str | None = None,
    pid: int | None = None,
    max_requests: int = 100_000,
) -> dict[str, float | int | None]:
    """Run the load; returns requests, requests_per_s, p50_ms, p99_ms, errors, mean_batch, rss_before/after_mib."""
    u = urllib.parse.urlsplit(url)
    body, ctype = multipart(png_bytes(size))
    headers = {"Content-Type": ctype, **({"X-API-Key": key} if key else {})}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    before, rss_before = scrape(url, key), rss_mib(pid)

    def client() -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        while time.monotonic() < stop:
            with lock:
                if len(latencies) + errors[0] >= max_requests:
                    return
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/inspect", body=body, headers=headers)
                resp = conn.getresponse()
                json.loads(resp.read())
                ok = resp.status == 200
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[0] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = scrape(url, key)
    batches = after["defectseg_batches_total"] - before["defectseg_batches_total"]
    images = after["defectseg_batched_images_total"] - before["defectseg_batched_images_total"]
    lat = sorted(latencies)
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(lat),
        "errors": errors[0],
        "requests_per_s": round(len(lat) / wall, 2),
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
        "mean_batch": round(images / batches, 2) if batches else None,
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_mib(pid),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--key")
    ap.add_argument("--pid", type=int, help="the server's process id, for its resident memory")
    a = ap.parse_args()
    if urllib.parse.urlsplit(a.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the load test runs against loopback only")
    print(json.dumps(load(a.url, a.clients, a.seconds, a.size, a.key, a.pid), indent=1))


if __name__ == "__main__":
    main()
