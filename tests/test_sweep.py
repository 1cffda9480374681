"""`edgecomp sweep`: the grid file, point keys, Pareto marking against a brute-force dominance
check, a small real sweep on the host (and Cortex-M7 in QEMU) with its reports, resuming,
failing points as rows, and a Ray cluster started here giving the same rows as the local pool."""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import HAVE_ARM, make_model, weight
from onnx import helper, numpy_helper

from edgecomp.errors import UserError
from edgecomp.options import BuildOptions
from edgecomp.sweep import LocalExecutor, RayExecutor, run_sweep
from edgecomp.sweep.driver import assign_data
from edgecomp.sweep.grid import NOT_SWEPT, SWEEPABLE, load_grid
from edgecomp.sweep.pareto import COSTS, mark_fronts, non_dominated
from edgecomp.sweep.points import DataRef, make_point
from edgecomp.sweep.store import ResultStore
from edgecomp.targets import load_target
from edgecomp.verify import Reference

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["host", "cortex-m7"] if HAVE_ARM else ["host"]
GRID = """
quantize = ["fp32", "int8", "int16x8"]
prune = ["none", "channels=0.5"]
"""
# Fields that are wall-clock measurements or cache state, different on every run by nature.
TIMING = {"host_ns", "seconds", "build_cached"}


def _classifier() -> onnx.ModelProto:
    """Two convolutions (prunable channels), pooling and a 4-class dense layer."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], "gap"),
        helper.make_node("Flatten", ["g"], ["f"], "flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], "fc", transB=1),
    ]
    inits = [weight("w1", [6, 1, 3, 3]), weight("b1", [6]), weight("w2", [8, 6, 3, 3]), weight("b2", [8]),
             weight("w3", [4, 8]), weight("b3", [4])]  # fmt: skip
    return make_model(nodes, [("x", [1, 1, 8, 8])], [("y", [1, 4])], inits)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The model, calibration samples, and evaluation samples labelled by the float model (so
    fp32's top-1 is 1 and a compressed point's top-1 is its agreement with float)."""
    folder = tmp_path_factory.mktemp("sweepdata")
    model = _classifier()
    onnx.save(model, folder / "tiny.onnx")
    rng = np.random.default_rng(0)
    np.save(folder / "calib.npy", rng.standard_normal((16, 1, 1, 8, 8)).astype(np.float32))
    x = rng.standard_normal((24, 1, 8, 8)).astype(np.float32)
    ref = Reference(model)
    y = np.array([int(np.argmax(ref.run([s[None]])[0])) for s in x])
    np.savez(folder / "eval.npz", x=x, y=y)
    (folder / "grid.toml").write_text(GRID)
    return folder


@pytest.fixture(scope="module")
def local_sweep(data, tmp_path_factory):
    """The sweep on two local worker processes."""
    out = tmp_path_factory.mktemp("sweep-local")
    result = run_sweep([data / "tiny.onnx"], TARGETS, data / "grid.toml", out, LocalExecutor(2),
                       [str(data / "calib.npy")], [str(data / "eval.npz")], log=lambda *_: None)  # fmt: skip
    return out, result


# --- the grid file -------------------------------------------------------------------------------


def _grid(tmp_path, text: str):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return load_grid(path)


def test_every_build_option_is_sweepable_or_says_why_not():
    assert {f.name for f in fields(BuildOptions)} == set(SWEEPABLE.values()) | set(NOT_SWEPT)


def test_grid_combines_normalizes_and_pools(tmp_path):
    configs = _grid(tmp_path, 'quantize = ["fp32", "int8"]\ndead-channels = ["proven", "none"]\n')
    # dead channels only matter to quantized builds: fp32 once, int8 twice
    assert [c.label for c in configs] == ["fp32", "int8", "int8 dead-channels=none"]
    assert configs[0].options.quantize is None and configs[0].options.fit_check is False
    # --optimize: weight records of integer kernels; nothing to choose for fp32 or TVM's kernels
    configs = _grid(tmp_path, 'quantize = ["fp32", "int8"]\noptimize = ["balanced", "speed"]\nkernels = ["auto", "tvm"]')
    assert sorted(c.label for c in configs) == ["fp32", "fp32 kernels=tvm", "int8", "int8 kernels=tvm",
                                                "int8 optimize=speed"]  # fmt: skip
    configs = _grid(tmp_path, """
[[grid]]
quantize = "fp32"
prune = ["none", "channels=0.50"]
[[grid]]
quantize = ["int8"]
prune = ["channels=0.5", "sparsity=0.25"]
calib_method = ["minmax", "percentile"]
[[grid]]
quantize = ["fp32"]
prune = ["channels=0.5"]
""")
    labels = [c.label for c in configs]
    assert labels == ["fp32", "fp32 prune=channels=0.5", "int8 prune=channels=0.5",
                      "int8 calib-method=percentile prune=channels=0.5", "int8 prune=sparsity=0.25",
                      "int8 calib-method=percentile prune=sparsity=0.25"]  # fmt: skip
    assert len(set(labels)) == len(labels)


@pytest.mark.parametrize("text, needle", [
    ('quantize = ["int4"]', "'quantize' cannot be 'int4'; use one of int8, int16x8"),
    ('quantise = ["int8"]', "unknown option 'quantise'"),
    ('per-layer = [true]', "cannot be swept"),
    ('quantize = []', "has no values"),
    ('quantize = [8]', "takes strings"),
    ('prune = ["channels=2"]', "prune value 'channels=2'"),
    ('prune = ["channels=missing.json"]', "not found"),
    ('quantize = ["int8"\n', "cannot read grid file"),
    ('quantize = ["int8"]\n[[grid]]\nprune = ["none"]', "outside the [[grid]] tables"),
    ('', "the grid is empty"),
])  # fmt: skip
def test_bad_grid_is_one_clear_error(tmp_path, text, needle):
    with pytest.raises(UserError, match=None) as err:
        _grid(tmp_path, text)
    assert needle in str(err.value)


def test_assign_data():
    assert assign_data(["d.npy"], ["a", "b"], "--calib") == {"a": Path("d.npy"), "b": Path("d.npy")}
    assert assign_data(["b=x.npz"], ["a", "b"], "--eval") == {"a": None, "b": Path("x.npz")}
    with pytest.raises(UserError, match="no model named 'c'"):
        assign_data(["c=x.npz"], ["a", "b"], "--eval")
    with pytest.raises(UserError, match="MODEL=PATH"):
        assign_data(["x.npz", "y.npz"], ["a", "b"], "--eval")


# --- keys and fronts -------------------------------------------------------------------------------


def test_point_key_follows_what_the_row_depends_on(data, tmp_path):
    fp32, int8, int8_none = _grid(tmp_path, 'quantize = ["fp32", "int8"]\ndead-channels = ["proven", "none"]')
    model, calib, ev = (DataRef.of(data / n) for n in ("tiny.onnx", "calib.npy", "eval.npz"))
    m7, m4 = load_target("cortex-m7"), load_target("cortex-m4")
    key = make_point("tiny", model, m7, "cortex-m7", int8, calib, ev).key
    assert key == make_point("tiny", model, m7, "cortex-m7", int8, calib, ev).key
    other_calib = tmp_path / "c.npy"
    np.save(other_calib, np.zeros((4, 1, 1, 8, 8), np.float32))
    changed = [
        make_point("tiny", model, m4, "cortex-m4", int8, calib, ev),
        make_point("tiny", model, m7, "cortex-m7", int8_none, calib, ev),
        make_point("tiny", model, m7, "cortex-m7", int8, DataRef.of(other_calib), ev),
        make_point("tiny", model, m7, "cortex-m7", int8, calib, None),
        make_point("tiny", DataRef.of(data / "calib.npy"), m7, "cortex-m7", int8, calib, ev),
    ]
    assert len({p.key for p in changed} | {key}) == len(changed) + 1
    # a float build takes no calibration data: its point is the same with any
    assert (make_point("tiny", model, m7, "cortex-m7", fp32, calib, ev).key
            == make_point("tiny", model, m7, "cortex-m7", fp32, DataRef.of(other_calib), ev).key)  # fmt: skip


def _dominated(row: dict, others: list[dict], cost: str) -> bool:
    acc = float(row["accuracy"])
    return any(float(o["accuracy"]) >= acc and o[cost] <= row[cost] and (float(o["accuracy"]) > acc or o[cost] < row[cost])
               for o in others if o is not row)  # fmt: skip


def _check_fronts(rows: list[dict]) -> None:
    """Every row's marks against the definition, by brute force."""
    for row in rows:
        for front, cost in COSTS.items():
            pool = [r for r in rows if r["model"] == row["model"] and r["status"] == "ok" and r["fits"] is not False
                    and r["accuracy"] is not None and r[cost] is not None]  # fmt: skip
            want = row in pool and not _dominated(row, pool, cost)
            assert row["pareto"][front] == want, (front, row["target"], row["config"])


def test_pareto_marks_match_brute_force():
    rng = random.Random(0)
    for _ in range(300):
        pts = [(rng.choice([0.5, 0.7, 0.9, float("inf")]), rng.choice([1, 2, 3, 5])) for _ in range(rng.randint(0, 9))]
        want = [not any(a >= x and c <= y and (a > x or c < y) for j, (a, c) in enumerate(pts) if j != i)
                for i, (x, y) in enumerate(pts)]  # fmt: skip
        assert non_dominated(pts) == want
    rows = []
    for _ in range(40):
        status = rng.choice(["ok", "ok", "ok", "failed"])
        rows.append({"model": rng.choice("ab"), "status": status, "fits": rng.choice([True, True, False]),
                     "accuracy": rng.choice([10.0, 20.0, 30.0, "inf"]) if status == "ok" else None,
                     **{c: rng.choice([100, 200, 300]) if status == "ok" else None for c in COSTS.values()}})  # fmt: skip
    mark_fronts(rows)
    _check_fronts(rows)
    assert any(r["pareto"]["flash"] for r in rows)


def test_store_keeps_final_rows_and_measures_errors_again(tmp_path):
    store = ResultStore(tmp_path)
    store.save({"key": "a", "status": "ok"})
    store.save({"key": "b", "status": "error", "reason": "QEMU timed out"})
    store.save({"key": "c", "status": "failed", "reason": "does not fit"})
    (store.folder / "d.json").write_text("{truncated")
    assert store.finished("a") and store.finished("c")
    assert store.finished("b") is None and store.load("b")["reason"] == "QEMU timed out"
    assert store.finished("d") is None and store.finished("zzz") is None


# --- a real sweep ----------------------------------------------------------------------------------


def test_sweep_rows_reports_and_fronts(local_sweep):
    out, result = local_sweep
    rows = result.rows
    assert result.ran == len(rows) == 6 * len(TARGETS) and result.reused == 0
    assert [(r["target"], r["config"]) for r in rows] == list(itertools.product(TARGETS, [
        "fp32", "fp32 prune=channels=0.5", "int8", "int8 prune=channels=0.5", "int16x8",
        "int16x8 prune=channels=0.5"]))  # fmt: skip
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["samples"] == 24 and r["eval_source"] == "eval" and r["accuracy_metric"] == "top1"
        assert r["accuracy"] == r["top1"] and r["float_top1"] == 1.0  # labels are the float model's
        assert r["macs"] > 0
        if r["options"]["quantize"]:
            assert r["device_check"] == "bit-exact"
        else:
            assert r["device_check"].startswith("rel. error")
    by = {(r["target"], r["config"]): r for r in rows}
    for t in TARGETS:
        assert by[t, "fp32"]["sqnr_db"] == "inf" and by[t, "fp32"]["top1"] == 1.0  # it is the reference
        assert by[t, "int16x8"]["sqnr_db"] > by[t, "int8"]["sqnr_db"] > 20
        assert by[t, "int8 prune=channels=0.5"]["macs"] < by[t, "int8"]["macs"]
        assert by[t, "fp32"]["sqnr_db"] == by["host", "fp32"]["sqnr_db"]
        assert by[t, "int8"]["sqnr_db"] == by["host", "int8"]["sqnr_db"]  # integer arithmetic: the same everywhere
    if HAVE_ARM:
        m7 = [r for r in rows if r["target"] == "cortex-m7"]
        for r in m7:
            assert r["instructions"] > 0 and r["fits"] is True and r["stack_bytes"] > 0
            assert r["clock_hz"] == 216_000_000 and r["latency_ms"] == round(1000 * r["instructions"] / 216e6, 4)
            assert r["ram_with_stack_bytes"] == r["ram_bytes"] + r["stack_bytes"]
        assert by["cortex-m7", "int8"]["instructions"] < by["cortex-m7", "fp32"]["instructions"]
        assert any(r["pareto"]["instructions"] for r in m7)
    _check_fronts(rows)

    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == rows and saved["points"] == len(rows) and saved["configurations"][0] == "fp32"
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(t["target"], t["config"], t["status"]) for t in table] == [(r["target"], r["config"], "ok") for r in rows]
    assert {"quantize", "prune", "pareto_instructions", "instructions", "latency_ms"} <= set(table[0])
    png = out / "pareto-tiny.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "index.html").read_text()
    assert "data:image/png;base64," in html and "int16x8 prune=channels=0.5" in html
    assert "src=\"http" not in html and "<script" not in html  # self-contained


def test_rerun_skips_finished_points_and_resumes_an_interrupted_sweep(local_sweep, data):
    out, first = local_sweep
    args = ([data / "tiny.onnx"], TARGETS, data / "grid.toml", out, LocalExecutor(1),
            [str(data / "calib.npy")], [str(data / "eval.npz")])  # fmt: skip
    t0 = time.monotonic()
    again = run_sweep(*args, log=lambda *_: None)
    assert again.ran == 0 and again.reused == len(first.rows) and time.monotonic() - t0 < 30
    assert again.rows == first.rows
    # an interrupted sweep: two points never stored, one stored with a device error
    lost = [first.rows[1], first.rows[-1]]
    for r in lost:
        (out / "points" / f"{r['key']}.json").unlink()
    flaky = first.rows[2]
    ResultStore(out).save({**flaky, "status": "error", "reason": "device timed out"})
    resumed = run_sweep(*args, log=lambda *_: None)
    assert resumed.ran == 3 and resumed.reused == len(first.rows) - 3
    assert [_measured(r) for r in resumed.rows] == [_measured(r) for r in first.rows]
    assert all(r["build_cached"] for r in resumed.rows if r["key"] in {flaky["key"], *(x["key"] for x in lost)})


def _measured(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING and not (row["target"] == "host" and k == "latency_ms")}


def _mul_model() -> onnx.ModelProto:
    """A Mul by a constant that varies along the width: float compiles, int8 has no kernel for it
    (a constant operand must be one value, or one per channel)."""
    scale = numpy_helper.from_array(np.array([0.5, 2.0, 1.5, -1.0, 3.0, 0.25], np.float32).reshape(1, 1, 1, 6), "s")
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"], "scale_mul"), helper.make_node("Relu", ["m"], ["y"], "relu")]
    return make_model(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 3, 6, 6])], [scale])


def test_failing_points_are_rows_with_their_reason(data, tmp_path):
    onnx.save(_mul_model(), tmp_path / "mul.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).standard_normal((8, 1, 3, 6, 6)).astype(np.float32))
    (tmp_path / "grid.toml").write_text('quantize = ["fp32", "int8"]\n')
    targets = ["host"]
    if HAVE_ARM:  # a part too small for the model (measured, marked as not fitting) and a memory map too small
        src = (REPO / "targets" / "cortex-m7.toml").read_text()
        (tmp_path / "tiny-part.toml").write_text(
            src.replace('name = "cortex-m7"', 'name = "tiny-part"').replace("flash_bytes = 2_097_152", "flash_bytes = 4096"))
        (tmp_path / "tiny-map.toml").write_text(
            src.replace('name = "cortex-m7"', 'name = "tiny-map"').replace("flash_length = 0x00400000", "flash_length = 0x1000"))
        targets += [str(tmp_path / "tiny-part.toml"), str(tmp_path / "tiny-map.toml")]  # fmt: skip
    result = run_sweep([tmp_path / "mul.onnx", data / "tiny.onnx"], targets, tmp_path / "grid.toml",
                       tmp_path / "out", LocalExecutor(1), [f"mul={tmp_path / 'calib.npy'}", f"tiny={data / 'calib.npy'}"],
                       log=lambda *_: None)  # fmt: skip
    assert len(result.rows) == 2 * len(targets) * 2
    by = {(r["model"], r["target"], r["config"]): r for r in result.rows}
    int8 = by["mul", "host", "int8"]
    assert int8["status"] == "failed" and "Mul" in int8["reason"] and int8["instructions"] is None
    assert by["mul", "host", "fp32"]["status"] == "ok" and by["mul", "host", "fp32"]["eval_source"] == "calib"
    if HAVE_ARM:
        over = by["tiny", "tiny-part", "int8"]
        assert over["status"] == "ok" and over["fits"] is False and "flash" in over["reason"]
        assert over["instructions"] > 0 and not any(over["pareto"].values())
        unlinkable = by["tiny", "tiny-map", "fp32"]
        assert unlinkable["status"] == "failed" and unlinkable["fits"] is False
        assert "does not fit" in unlinkable["reason"] and "overflow" in unlinkable["reason"]
    _check_fronts(result.rows)
    assert (tmp_path / "out" / "index.html").exists()  # the sweep went on to its reports


# --- Ray --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    """`ray start ARGS --block` in its own process group, waited for until Ray says it runs."""
    log = open(log_path, "w")  # noqa: SIM115 (the child keeps writing to it)
    proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", *args, "--block"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    log.close()
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _ray_stop(proc)
            pytest.fail(f"ray start {' '.join(args)} did not start:\n{log_path.read_text()}")
        time.sleep(0.5)
    return proc


def _ray_stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster on this machine: a head node and one worker node, one CPU each (the machine's
    two), started and stopped here. Stopped by ending the process groups of our `ray start
    --block`s, not `ray stop`, which ends every Ray process of the user on the machine."""
    pytest.importorskip("ray", reason="ray (the [ray] extra) is not installed")
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="ecray", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
    head = _ray_start(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                       "--disable-usage-stats", f"--temp-dir={temp}"], env, temp / "head.log")  # fmt: skip
    try:
        worker = _ray_start([f"--address=127.0.0.1:{port}", "--num-cpus=1"], env, temp / "worker.log")
        try:
            yield f"127.0.0.1:{port}"
        finally:
            _ray_stop(worker)
    finally:
        _ray_stop(head)


def test_ray_cluster_gives_the_local_rows(ray_cluster, local_sweep, data, tmp_path):
    _, local = local_sweep
    result = run_sweep([data / "tiny.onnx"], TARGETS, data / "grid.toml", tmp_path / "ray", RayExecutor(ray_cluster),
                       [str(data / "calib.npy")], [str(data / "eval.npz")], log=lambda *_: None)  # fmt: skip
    assert result.ran == len(local.rows) and not any(r["build_cached"] for r in result.rows)  # built afresh
    assert [_measured(r) for r in result.rows] == [_measured(r) for r in local.rows]


# --- the command line -------------------------------------------------------------------------------


def test_cli_rerun_from_cache_prints_the_table(local_sweep, data):
    from test_cli_errors import edgecomp

    out, result = local_sweep
    proc = edgecomp("sweep", data / "tiny.onnx", "--targets", ",".join(TARGETS), "--grid", data / "grid.toml",
                    "--calib", data / "calib.npy", "--eval", data / "eval.npz", "-o", out, "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "int16x8 prune=channels=0.5" in proc.stdout and "Traceback" not in proc.stderr
    assert json.loads((out / "results.json").read_text())["reused"] == len(result.rows)


@pytest.mark.parametrize("case, code, needles", [
    ("bad_toml", 2, ["cannot read grid file"]),
    ("unknown_option", 2, ["unknown option 'prune_ratio'"]),
    ("unknown_target", 2, ["unknown target 'cortex-m99'"]),
    ("missing_model", 2, ["model file not found"]),
    ("no_calib", 2, ["need calibration data", "--calib"]),
    ("bad_eval", 2, ["eval.npz"]),
    ("board", 2, ["board without a qemu machine"]),
    ("dead_ray", 3, ["no ray cluster answers"]),
])  # fmt: skip
def test_cli_bad_input_is_one_line_and_exit_code(data, tmp_path, case, code, needles):
    from test_cli_errors import assert_clean_error, edgecomp

    grid = tmp_path / "g.toml"
    grid.write_text({"bad_toml": "quantize = [", "unknown_option": "prune_ratio = [0.5]"}.get(case, GRID))
    model = tmp_path / "nope.onnx" if case == "missing_model" else data / "tiny.onnx"
    args = [model, "--targets", {"unknown_target": "host,cortex-m99", "board": "nucleo-f746zg"}.get(case, "host"),
            "--grid", grid, "-o", tmp_path / "out"]  # fmt: skip
    if case != "no_calib":
        args += ["--calib", data / "calib.npy"]
    if case == "bad_eval":
        (tmp_path / "eval.npz").write_bytes(b"not a zip")
        args += ["--eval", tmp_path / "eval.npz"]
    if case == "dead_ray":
        args += ["--ray", f"127.0.0.1:{_free_port()}"]
    assert_clean_error(edgecomp("sweep", *args), code, *needles)
    if code == 2:  # refused before anything was written
        assert not (tmp_path / "out").exists()
