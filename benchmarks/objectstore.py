"""Uploading a file to an S3-protocol server on 127.0.0.1 (moto's, as the tests use): one PUT
against multipart uploads of several part sizes and thread counts, through geoseg.objectstore.

Wall time (best of N), the client's CPU time and the peak of Python memory held by the upload.
moto is a Python server: on loopback its own CPU dominates, so the ratios say what the client
side costs and how the modes compare here, not what a real store's network would give.

    nice .venv/bin/python benchmarks/objectstore.py [--mb 100] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from geoseg.objectstore import client as store_client
from geoseg.objectstore import reads, uploads
from tests.s3server import _start, set_aws_env

MiB = 1024 * 1024


class _Env:
    """Enough of pytest's monkeypatch for set_aws_env, on the real environment."""

    def setenv(self, name: str, value: str) -> None:
        os.environ[name] = value

    def delenv(self, name: str, raising: bool = True) -> None:
        os.environ.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    size = args.mb * 1000 * 1000
    with tempfile.TemporaryDirectory() as tmp:
        server = _start(Path(tmp) / "server.log")
        try:
            set_aws_env(_Env(), server.endpoint)  # type: ignore[arg-type]
            client = store_client.s3_client()
            client.create_bucket(Bucket="bench")
            local = Path(tmp) / "upload.bin"
            with open(local, "wb") as f:
                f.writelines(os.urandom(MiB) for _ in range(size // MiB + 1))
                f.truncate(size)
            modes = [("single PUT", size + 1, uploads.PART_SIZE, 1)] + [
                (f"multipart {p} MiB x {t}", 0, p * MiB, t)
                for p, t in ((8, 4), (8, 1), (16, 4), (32, 4))
            ]
            rows = []
            tracemalloc.start()
            for name, threshold, part, threads in modes:
                uploads.PART_THREADS = threads
                walls, cpus, peaks = [], [], []
                for i in range(args.repeat):
                    tracemalloc.reset_peak()
                    base = tracemalloc.get_traced_memory()[0]
                    t, c = time.perf_counter(), time.process_time()
                    with open(local, "rb") as f:
                        uploads.upload_fileobj(
                            f, f"s3://bench/{i}.bin", threshold=threshold, part_size=part, size=size
                        )
                    walls.append(time.perf_counter() - t)
                    cpus.append(time.process_time() - c)
                    peaks.append(tracemalloc.get_traced_memory()[1] - base)
                    reads.delete(f"s3://bench/{i}.bin")
                rows.append(
                    {
                        "mode": name,
                        "wall_s": round(min(walls), 2),
                        "client_cpu_s": round(min(cpus), 2),
                        "peak_python_mb": round(max(peaks) / 1e6, 1),
                    }
                )
                print(rows[-1], flush=True)
            best = min(r["wall_s"] for r in rows)
            for r in rows:
                r["wall_ratio_to_best"] = round(r["wall_s"] / best, 2)
        finally:
            server.process.terminate()
            server.process.wait()
    result = {"file_mb": args.mb, "repeat": args.repeat, "cpus": os.cpu_count(), "rows": rows}
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
