"""Board targets: each builds a warning-free firmware (float and int8) that links within the
board's memory, with its start-up register table, UART driver and timer from the target file; the
STM32F4 family's drivers run in QEMU (netduinoplus2, in test_ops/test_quantize); `edgecomp flash`
fails clearly without a probe."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from elftools.elf.elffile import ELFFile

from edgecomp.cli import main
from edgecomp.errors import UserError
from edgecomp.pipeline import BuildOptions, build
from edgecomp.targets import load_target

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_cnn.onnx"
BOARDS = ["nucleo-f746zg", "disco-f746ng", "nucleo-h743zi", "nucleo-l4r5zi", "nucleo-u575zi-q", "pico"]
pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")


@pytest.mark.parametrize("board", BOARDS)
def test_board_firmware_builds_and_fits(board, tmp_path):
    target = load_target(board)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 1, 1, 28, 28)).astype(np.float32))
    for options in (
        BuildOptions(extra_cflags="-Werror"),
        BuildOptions(extra_cflags="-Werror", quantize="int8"),
    ):
        result = build(EXAMPLE, target, tmp_path / (options.quantize or "fp32"), options, log=lambda *_: None,
                       calib=calib if options.quantize else None)  # fmt: skip
        rep = result.report
        assert rep["fits"]["flash_ok"] and rep["fits"]["ram_ok"]
        header = (result.outdir / "ec" / "ec_target.h").read_text()
        assert f"#define EC_INIT_OPS {len(target.init)}u" in header and len(target.init) >= 4
        assert f"#define EC_UART_{target.uart['driver'].upper()} 1" in header
        with open(result.outdir / "firmware.elf", "rb") as f:
            elf = ELFFile(f)
            assert elf.header.e_entry & ~1 >= target.memory["flash_origin"]
            vectors = next(
                s for s in elf.iter_sections() if s["sh_flags"] & 2 and s["sh_size"] and s.name != ".boot2"
            )  # first loaded after the boot loader
            assert vectors["sh_addr"] == target.memory["flash_origin"]  # the vector table heads the image
        assert rep["toolchain"]["cflags"].startswith(" ".join(target.arch_flags))


def test_cortex_m7_boards_time_with_dwt_and_enable_caches(tmp_path):
    result = build(EXAMPLE, load_target("nucleo-f746zg"), tmp_path / "o", log=lambda *_: None)
    header = (result.outdir / "ec" / "ec_target.h").read_text()
    assert "#define EC_TIMER_KIND EC_TIMER_DWT" in header and "#define EC_CACHES 1" in header
    assert result.report["caches"] is True and result.report["core_clock_hz"] == 216_000_000


def test_rp2040_image_starts_with_a_valid_second_stage_boot_loader(tmp_path):
    """The boot ROM runs the 256 bytes at 0x10000000 only if their last word is the CRC-32/MPEG-2
    of the first 252; the loader then enters the image at 0x10000100."""
    from edgecomp.build import crc32_mpeg2

    assert crc32_mpeg2(b"123456789") == 0x0376E6E7  # the CRC's published check value
    result = build(EXAMPLE, load_target("pico"), tmp_path / "o", log=lambda *_: None)
    with open(result.outdir / "firmware.elf", "rb") as f:
        boot2 = ELFFile(f).get_section_by_name(".boot2")
        assert boot2["sh_addr"] == 0x10000000 and boot2["sh_size"] == 256
        data = boot2.data()
    assert int.from_bytes(data[252:], "little") == crc32_mpeg2(data[:252])
    assert data[:2] == bytes.fromhex("00b5")  # push {lr}: ec_boot2.S, not padding
    assert (0x10000100).to_bytes(4, "little") in data[:252]  # its jump target: the vector table
    assert result.report["core_clock_hz"] == 125_000_000


def test_init_ops_are_checked(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "targets" / "nucleo-f746zg.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('op = "wait"', 'op = "poke"', 1))
    with pytest.raises(UserError, match="init"):
        load_target(str(bad))
    bad.write_text(text.replace('op = "wait"', 'op = "delay"', 1))  # a delay needs loops
    with pytest.raises(UserError, match="loops"):
        load_target(str(bad))
    l4 = load_target("nucleo-l4r5zi")  # the boost-mode switch waits >= 1 us with a delay op
    assert any(op.code == 3 and op.value > 0 for op in l4.init) and l4.clock_hz == 120_000_000


def test_flash_errors_are_clear(tmp_path, capsys):
    result = build(EXAMPLE, load_target("pico"), tmp_path / "o", log=lambda *_: None)
    assert main(["flash", str(tmp_path / "missing"), "--target", "pico"]) == 2
    assert main(["flash", str(result.outdir), "--target", "host"]) == 2
    capsys.readouterr()
    # No probe is attached here: pyOCD says so (or that it is not installed), exit code 3.
    assert main(["flash", str(result.outdir), "--target", "pico"]) == 3
    err = capsys.readouterr().err
    assert "no debug probe" in err or "pip install 'edgecomp[board]'" in err


def _small_budget_target(tmp_path: Path) -> Path:
    """cortex-m7-h743-ext with a 300 KiB flash and 40 KiB RAM budget: weights over 44 KiB and an
    arena over ~8 KiB go to the external memories."""
    from edgecomp.resources import data_dir

    text = (data_dir("targets") / "cortex-m7-h743-ext.toml").read_text()
    text = text.replace("flash_bytes = 2_097_152", "flash_bytes = 307_200").replace(
        "ram_bytes = 524_288", "ram_bytes = 40_960"
    )
    path = tmp_path / "small-ext.toml"
    path.write_text(text)
    return path


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="needs qemu-system-arm")
def test_weights_and_arena_beyond_the_chip_go_to_external_memory_and_run(tmp_path):
    import onnx
    from conftest import make_model, random_inputs, weight
    from onnx import helper

    from edgecomp.runner import run_samples
    from edgecomp.verify import Reference, compare

    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], "fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], "relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], "fc2", transB=1)]  # fmt: skip
    model = make_model(nodes, [("x", [1, 3000])], [("y", [1, 10])],
                       [weight("w1", [30, 3000]), weight("b1", [30]), weight("w2", [10, 30]), weight("b2", [10])])  # fmt: skip
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    target = load_target(str(_small_budget_target(tmp_path)))
    result = build(path, target, tmp_path / "o", BuildOptions(extra_cflags="-Werror"), log=lambda *_: None)
    ext = result.report["external"]
    assert ext["flash_bytes"] >= 30 * 3000 * 4 and ext["ram_bytes"] >= 12_000  # weights and arena outside
    assert result.report["flash_bytes"] < 307_200 - 200_000  # the chip keeps the code only
    data = [random_inputs(result.model, s) for s in range(2)]
    runs = run_samples(result, data)
    ref = Reference(result.model)
    assert compare([r.outputs for r in runs], [ref.run(d) for d in data]).rel_error <= 1e-4
    # Without external memory the same model is refused, saying by how much.
    from edgecomp.errors import DoesNotFitError

    text = (tmp_path / "small-ext.toml").read_text()
    head, _, tail = text.partition("[external]")
    (tmp_path / "small.toml").write_text(head + "[uart]" + tail.partition("[uart]")[2])
    with pytest.raises(DoesNotFitError, match=r"flash [\d,]+ B > 307,200 B by [\d,]+ B"):
        build(path, load_target(str(tmp_path / "small.toml")), tmp_path / "p", log=lambda *_: None)


def test_a_model_that_overflows_the_memory_map_is_refused_by_how_much(tmp_path):
    """The linker's overflow (here a 4 KiB flash region) is a fit error with the overshoot, not a
    compiler failure, and leaves no output folder."""
    from edgecomp.errors import DoesNotFitError
    from edgecomp.resources import data_dir

    text = (
        (data_dir("targets") / "cortex-m7.toml")
        .read_text()
        .replace("flash_length = 0x00400000", "flash_length = 0x00001000")
    )
    path = tmp_path / "tiny-flash.toml"
    path.write_text(text)
    with pytest.raises(DoesNotFitError, match=r"FLASH by [\d,]+ B"):
        build(EXAMPLE, load_target(str(path)), tmp_path / "o", log=lambda *_: None)
    assert not (tmp_path / "o").exists()
