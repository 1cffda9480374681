"""Where the points run: a local process pool (the default), or Ray tasks on a Ray cluster.

Both yield each point's row as it finishes; neither schedules anything itself. A point is one
task of one CPU (a build runs make -j2 for a moment, QEMU one thread): the pool's size or the
cluster's CPUs bound how many run at once.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import socket
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from edgecomp.errors import ToolError
from edgecomp.pipeline import source_digest
from edgecomp.sweep.points import DataRef, Point
from edgecomp.sweep.run import error_row, run_point


class LocalExecutor:
    """`jobs` worker processes on this machine (spawned: TVM and onnxruntime start threads, which
    a fork would copy in an unknown state); one job runs the points in this process."""

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = jobs

    @property
    def name(self) -> str:
        return f"{self.jobs} local worker{'s' if self.jobs > 1 else ''}"

    def run(self, points: list[Point], workdir: Path, timeout: float) -> Iterator[dict]:
        if self.jobs == 1 or len(points) <= 1:
            for point in points:
                yield run_point(point, workdir, timeout)
            return
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.jobs, len(points)), mp_context=ctx)
        try:
            futures = {pool.submit(run_point, p, workdir, timeout): p for p in points}
            for future in as_completed(futures):
                try:
                    yield future.result()
                except Exception as exc:  # the worker died (a crash in native code): this point's row
                    yield error_row(futures[future], f"worker process failed: {type(exc).__name__}: {exc}")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Ray tasks on the cluster at `address` ("auto": the one `ray start` runs here, or
    RAY_ADDRESS). The model and data files travel through Ray's object store, so worker nodes
    need edgecomp (the same version: checked) and its toolchain, not the files; their builds
    are cached in the same output folder path on each node (or a temporary folder)."""

    def __init__(self, address: str = "auto") -> None:
        self.address = address

    @property
    def name(self) -> str:
        return f"Ray cluster at {self.address}"

    def run(self, points: list[Point], workdir: Path, timeout: float) -> Iterator[dict]:
        """Connect (errors here, before any progress is shown), then yield rows as tasks finish."""
        ray = _import_ray()
        _check_reachable(self.address)
        try:
            ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as exc:  # ConnectionError, or Ray's own for a bad address
            raise ToolError(f"cannot connect to a Ray cluster at '{self.address}': {_first_line(exc)} "
                            "(start one with `ray start --head`, or give its address)") from exc  # fmt: skip
        try:
            _check_workers(ray)
        except BaseException:
            ray.shutdown()
            raise
        return self._rows(ray, points, workdir, timeout)

    def _rows(self, ray, points: list[Point], workdir: Path, timeout: float) -> Iterator[dict]:
        pending: dict = {}
        try:
            task = ray.remote(num_cpus=1, max_retries=0)(_ray_point)
            blobs: dict[str, object] = {}

            def blob(ref: DataRef | None):
                if ref is None:
                    return None
                if ref.digest not in blobs:
                    blobs[ref.digest] = ray.put(_pack(ref.path))
                return blobs[ref.digest]

            pending = {task.remote(p, str(workdir), timeout, blob(p.model), blob(p.calib), blob(p.samples)): p
                       for p in points}  # fmt: skip
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    point = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except ray.exceptions.RayError as exc:  # a lost worker or node
                        yield error_row(point, f"Ray task failed: {_first_line(exc)}")
        finally:
            for ref in pending:
                ray.cancel(ref)
            ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ToolError("--ray needs Ray: pip install 'edgecomp[ray]'") from exc
    return ray


def _check_reachable(address: str) -> None:
    """A HOST:PORT address must answer: Ray itself retries a dead address for many minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # "auto", ray:// client addresses: Ray's own checks answer quickly
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        raise ToolError(f"no Ray cluster answers at {address}: {exc} (start one with `ray start --head`)") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _worker_digest() -> str:
    return source_digest()


def _check_workers(ray) -> None:
    """The workers must import the same edgecomp as this process (its sources' digest): rows made
    by other code would be mixed with these under the same keys."""
    try:
        theirs = ray.get(ray.remote(num_cpus=1)(_worker_digest).remote(), timeout=300)
    except Exception as exc:
        raise ToolError(f"the Ray workers cannot run edgecomp: {_first_line(exc)} (install the same "
                        "edgecomp on every node, e.g. pip install -e . from this checkout)") from exc  # fmt: skip
    if theirs != source_digest():
        raise ToolError("the Ray workers run a different edgecomp (its sources differ from this one's): "
                        "install the same edgecomp on every node")  # fmt: skip


def _pack(path: Path) -> tuple[str, dict[str, bytes]]:
    """A data file, or a folder of .npy, as (name, {relative path: bytes})."""
    path = Path(path)
    if path.is_dir():
        return path.name, {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
                           if p.is_file()}  # fmt: skip
    return path.name, {"": path.read_bytes()}


def _unpack(ref: DataRef, packed, inputs: Path) -> DataRef:
    """The file as the worker sees it: where the driver had it if it is there with the same
    content (a worker on the driver's machine), else written under `inputs`/<digest>/."""
    if ref.path.exists() and DataRef.of(ref.path).digest == ref.digest:
        return ref
    name, files = packed
    dest = inputs / ref.digest / name
    if not dest.exists():
        inputs.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".in.", dir=inputs))
        for rel, data in files.items():
            target = tmp / name / rel if rel else tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another task on this node wrote it first
            (tmp / name).rename(dest)
        shutil.rmtree(tmp, ignore_errors=True)
    return DataRef(dest, ref.digest)


def _ray_point(point: Point, workdir: str, timeout: float, model, calib, samples) -> dict:
    """One point in a Ray worker: its files from the object store if this node lacks them."""
    work = Path(workdir)
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError:  # a node where the driver's output path cannot be made
        work = Path(tempfile.gettempdir()) / "edgecomp-sweep"
        work.mkdir(parents=True, exist_ok=True)
    inputs = work / "inputs"
    point = replace(
        point,
        model=_unpack(point.model, model, inputs),
        calib=_unpack(point.calib, calib, inputs) if point.calib else None,
        samples=_unpack(point.samples, samples, inputs) if point.samples else None,
    )
    return run_point(point, work, timeout)
