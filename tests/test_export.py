"""`edgecomp export` and `--name`: two models, each exported with its own prefix, linked into one
program that shares one arena between them — built with each ecosystem's own tool where it installs
here (CMake for the host and, through a toolchain file, for a Cortex-M7 firmware run in QEMU;
PlatformIO's CLI for a native and a Cortex-M7 environment) — and both outputs checked against
their references (onnxruntime for the float model, the integer reference bit for bit for the int8
one).

PlatformIO's package registry cannot be reached from these machines, so the PlatformIO tests work
offline: its core directory gets `tool-scons` made from SCons 4.11.1 (the PyPI release that
PlatformIO's tool-scons 4.41101.0 packs) and a development platform written here (a few lines:
host gcc, or the Arm toolchain with the core's flags and edgecomp's linker script; BuildProgram).
`pio run` itself, its Library Dependency Finder and its reading of the exported library.json
(srcDir, includeDir, build flags with -lm) are PlatformIO's own. Zephyr and Arduino have no tool
here: the Zephyr modules build a Cortex-M7 firmware through their own zephyr/CMakeLists.txt and
Kconfig symbol with Zephyr's four CMake functions stubbed; the Arduino libraries are checked by
layout, and the example sketch compiled as C++ (host, and the core's flags) against a stub
Arduino.h.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import HAVE_ARM, make_model, weight
from elftools.elf.elffile import ELFFile
from onnx import helper

from edgecomp.cli import main as cli_main
from edgecomp.codegen.render import port_files
from edgecomp.export import export
from edgecomp.harness.link import SerialLink
from edgecomp.harness.qemu import QemuProcess
from edgecomp.options import BuildOptions
from edgecomp.passes import fold_constants
from edgecomp.pipeline import build
from edgecomp.quant import int_graph_for, run_int_graph
from edgecomp.runner import run_samples
from edgecomp.targets import load_target
from edgecomp.verify import Reference

QUIET = {"log": lambda *_: None}


def _wake_model() -> onnx.ModelProto:
    """The float one: a small CNN (Conv, Relu, Gemm, Softmax: TVM's kernels, expf from libm)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["y"], axis=1),
    ]
    inits = [weight("w1", [4, 1, 3, 3]), weight("b1", [4]), weight("w2", [3, 4 * 6 * 6]), weight("b2", [3])]
    return make_model(nodes, [("x", [1, 1, 6, 6])], [("y", [1, 3])], inits)


def _cmd_model() -> onnx.ModelProto:
    """The one quantized to int8 on export (dense micro-kernels)."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [weight("w1", [16, 24]), weight("b1", [16]), weight("w2", [4, 16]), weight("b2", [4])]
    return make_model(nodes, [("x", [1, 24])], [("y", [1, 4])], inits)


def _sample(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Both models on disk, the int8 one's calibration data, and one input sample each."""
    d = tmp_path_factory.mktemp("models")
    onnx.save(_wake_model(), d / "wake.onnx")
    onnx.save(_cmd_model(), d / "cmd.onnx")
    np.save(d / "calib.npy", np.stack([_sample((1, 24), s) for s in range(16)]))
    return {"dir": d, "wake_x": _sample((1, 1, 6, 6), 1), "cmd_x": _sample((1, 24), 2)}


def _export_pair(models: dict, target: str, out: Path, fmt: str = "all") -> dict[str, Path]:
    """wake (float) and cmd (int8, its QDQ model saved for the reference) exported for `target`."""
    t = load_target(target)
    d = models["dir"]
    export(d / "wake.onnx", t, out / "wake", BuildOptions(name="wake", arena="caller", extra_cflags="-Werror"), fmt,
           **QUIET)  # fmt: skip
    export(d / "cmd.onnx", t, out / "cmd", BuildOptions(name="cmd", arena="caller", quantize="int8",
                                                        extra_cflags="-Werror"), fmt, calib=d / "calib.npy",
           save_quantized=out / "cmd_q.onnx", **QUIET)  # fmt: skip
    return {"wake": out / "wake", "cmd": out / "cmd", "cmd_q": out / "cmd_q.onnx"}


def _references(models: dict, cmd_q: Path) -> dict[str, np.ndarray]:
    wake = Reference(onnx.load(str(models["dir"] / "wake.onnx"))).run([models["wake_x"]])[0]
    graph = int_graph_for(fold_constants(onnx.load(str(cmd_q))).model, "float")
    cmd = run_int_graph(graph, [models["cmd_x"]])[0]
    return {"wake": wake, "cmd": cmd}


# The user's program: both models, one arena, run one after the other (and the first again, after
# the second overwrote the arena), outputs printed in hex; on a Cortex-M7 through edgecomp's port.
APP_C = r"""
#include <stdint.h>
#include <string.h>

#include "cmd.h"
#include "inputs.h"
#include "wake.h"

#define ARENA_BYTES (WAKE_ARENA_BYTES > CMD_ARENA_BYTES ? WAKE_ARENA_BYTES : CMD_ARENA_BYTES)
static uint8_t arena[ARENA_BYTES + 16] __attribute__((aligned(16)));

#ifdef __arm__
#include "ec_port.h"
static void out(const char *s, uint32_t n) { ec_port_write((const uint8_t *)s, n); }
#else
#include <stdio.h>
static void out(const char *s, uint32_t n) { fwrite(s, 1, n, stdout); }
#endif

static void say(const char *s) { out(s, (uint32_t)strlen(s)); }

static void say_u32(uint32_t v)
{
  char buf[11];
  int n = sizeof buf;
  do {
    buf[--n] = (char)('0' + v % 10u);
    v /= 10u;
  } while (v);
  out(buf + n, (uint32_t)(sizeof buf - (unsigned)n));
}

static void hex(const char *tag, const void *data, uint32_t bytes)
{
  static const char digits[] = "0123456789abcdef";
  const uint8_t *p = (const uint8_t *)data;
  say(tag);
  say(" ");
  for (uint32_t i = 0; i < bytes; ++i) {
    char two[2] = { digits[p[i] >> 4], digits[p[i] & 15u] };
    out(two, 2u);
  }
  say("\n");
}

static uint64_t now(void)
{
#ifdef __arm__
  return ec_port_ticks();
#else
  return 0u;
#endif
}

int main(void)
{
#ifdef __arm__
  ec_port_init();
  ec_port_timer_start();
#endif
  uint8_t digest[32];
  if (wake_init(arena, sizeof arena) != 0 || cmd_init(arena, sizeof arena) != 0) {
    say("init failed\n");
    return 1;
  }
  if (wake_init(arena + 1, ARENA_BYTES) != -2 || cmd_init(arena, CMD_ARENA_BYTES - 1u) != -1) {
    say("init accepted a bad arena\n");
    return 1;
  }
  if (wake_verify(digest) != 0 || cmd_verify(digest) != 0) {
    say("verify failed\n");
    return 1;
  }
  memcpy(wake_input(0), wake_x, WAKE_INPUT_0_BYTES);
  uint64_t t0 = now();
  int rc = wake_invoke();
  uint64_t t1 = now();
  hex("wake", wake_output(0), WAKE_OUTPUT_0_BYTES);
  memcpy(cmd_input(0), cmd_x, CMD_INPUT_0_BYTES);
  uint64_t t2 = now();
  rc |= cmd_invoke();
  uint64_t t3 = now();
  hex("cmd", cmd_output(0), CMD_OUTPUT_0_BYTES);
  float again[3];
  rc |= wake_run((const float *)wake_x, again);
  hex("wake2", again, sizeof again);
  say("ticks ");
  say_u32((uint32_t)(t1 - t0));
  say(" ");
  say_u32((uint32_t)(t3 - t2));
  say("\n");
  say(rc == 0 ? "done\n" : "failed\n");
#ifdef __arm__
  ec_port_exit(rc == 0 ? 0 : 1);
#endif
  return rc;
}
"""

APP_CMAKE = """
cmake_minimum_required(VERSION 3.13)
project(app C)
add_subdirectory(${WAKE_DIR} wake)
add_subdirectory(${CMD_DIR} cmd)
add_executable(app main.c)
target_link_libraries(app PRIVATE edgecomp::wake edgecomp::cmd)
target_compile_options(app PRIVATE -Wall -Wextra -Werror)
if(PORT_DIR)  # bare metal: edgecomp's start-up code and port, the target's memory map
  target_sources(app PRIVATE ${PORT_DIR}/ec/startup.c ${PORT_DIR}/ec/ec_port_cortexm.c ${PORT_DIR}/ec/ec_proto.c)
  target_include_directories(app PRIVATE ${PORT_DIR}/ec)
  target_link_options(app PRIVATE -T${PORT_DIR}/linker.ld -nostartfiles --specs=nano.specs -Wl,--gc-sections
                      -Wl,--no-warn-rwx-segments)
endif()
"""

# A bare-metal CMake toolchain: no core flags here — the exported libraries bring them.
ARM_TOOLCHAIN = """
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
"""

# Zephyr's build without Zephyr (not installable here): the four functions of its CMake extensions
# that an edgecomp module calls, as Zephyr defines them (a library of the module's sources linked
# into the application, include folders on every target through zephyr_interface), the modules
# added as Zephyr adds a `cmake: zephyr` module, the CONFIG_ symbols of their Kconfig given as
# Kconfig would, and the board's core flags in the toolchain's C flags (Zephyr's toolchain does so).
ZEPHYR_APP_CMAKE = """
cmake_minimum_required(VERSION 3.13)
project(app C)
add_library(zephyr_interface INTERFACE)
macro(zephyr_library_named name)
  set(ZEPHYR_CURRENT_LIBRARY ${name})
  add_library(${name} STATIC)
  target_link_libraries(${name} PUBLIC zephyr_interface)
  set_property(GLOBAL APPEND PROPERTY ZEPHYR_LIBS ${name})
endmacro()
function(zephyr_library_sources)
  target_sources(${ZEPHYR_CURRENT_LIBRARY} PRIVATE ${ARGN})
endfunction()
function(zephyr_library_compile_options)
  target_compile_options(${ZEPHYR_CURRENT_LIBRARY} PRIVATE ${ARGN})
endfunction()
function(zephyr_include_directories)
  target_include_directories(zephyr_interface INTERFACE ${ARGN})
endfunction()
foreach(module ${ZEPHYR_EXTRA_MODULES})
  get_filename_component(module_name ${module} NAME)
  set(ZEPHYR_CURRENT_MODULE_DIR ${module})
  add_subdirectory(${module}/zephyr modules/${module_name})
endforeach()
get_property(libs GLOBAL PROPERTY ZEPHYR_LIBS)
if(NOT libs)
  message(FATAL_ERROR "no module made a library")
endif()
add_executable(app main.c ${PORT_DIR}/ec/startup.c ${PORT_DIR}/ec/ec_port_cortexm.c ${PORT_DIR}/ec/ec_proto.c)
target_include_directories(app PRIVATE ${PORT_DIR}/ec)
target_compile_options(app PRIVATE -Wall -Wextra -Werror)
target_link_libraries(app PRIVATE ${libs} zephyr_interface m)
target_link_options(app PRIVATE -T${PORT_DIR}/linker.ld -nostartfiles --specs=nano.specs -Wl,--gc-sections
                    -Wl,--no-warn-rwx-segments)
"""


def _inputs_h(models: dict) -> str:
    rows = []
    for name in ("wake_x", "cmd_x"):
        data = ", ".join(str(b) for b in models[name].tobytes())
        rows.append(f"static const uint8_t {name}[] __attribute__((aligned(4))) = {{ {data} }};")
    return "#include <stdint.h>\n" + "\n".join(rows) + "\n"


def _app(folder: Path, models: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "main.c").write_text(APP_C)
    (folder / "inputs.h").write_text(_inputs_h(models))
    (folder / "CMakeLists.txt").write_text(APP_CMAKE)
    return folder


def _cmake(src: Path, build_dir: Path, *defs: str) -> None:
    cmake = shutil.which("cmake")
    assert cmake, "cmake is installed by scripts/setup.sh"
    for cmd in ([cmake, "-S", str(src), "-B", str(build_dir), *defs], [cmake, "--build", str(build_dir), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _parse(text: str) -> dict[str, bytes]:
    found = {m.group(1): bytes.fromhex(m.group(2)) for m in re.finditer(r"^(wake2?|cmd) ([0-9a-f]+)$", text, re.M)}
    assert "done" in text and len(found) == 3, text[-2000:]
    return found


def _check_outputs(found: dict[str, bytes], refs: dict[str, np.ndarray]) -> None:
    wake = np.frombuffer(found["wake"], np.float32).reshape(refs["wake"].shape)
    np.testing.assert_allclose(wake, refs["wake"], rtol=1e-5, atol=1e-6)
    assert found["wake2"] == found["wake"]  # the same after the other model used the shared arena
    cmd = np.frombuffer(found["cmd"], np.float32).reshape(refs["cmd"].shape)
    np.testing.assert_array_equal(cmd, refs["cmd"])  # int8 inside: bit for bit the integer reference


def _global_symbols(report: dict, prefix: str) -> list[str]:
    """The library's global symbols that do not start with its prefix (there must be none)."""
    return [s for s in report["library"]["global_symbols"] if not s.startswith(f"{prefix}_")]


def _arduino_stub(folder: Path) -> Path:
    """An Arduino.h with what the example sketch uses of the Arduino core (Serial, micros, delay)."""
    folder.mkdir()
    (folder / "Arduino.h").write_text(
        "#include <stdint.h>\n#include <string.h>\n"
        "struct SerialT { void begin(long) {} template <class T> void print(T) {} template <class T> void println(T) {}"
        " void println(const char *) {} };\nstatic SerialT Serial;\n"
        "static inline unsigned long micros() { return 0; }\nstatic inline void delay(unsigned long) {}\n"
    )  # fmt: skip
    return folder


def test_two_models_in_one_host_program_with_cmake(models, tmp_path):
    """The host exports, built by CMake into one program with ASan/UBSan and -Werror."""
    out = _export_pair(models, "host", tmp_path / "exp")
    for prefix in ("wake", "cmd"):
        report = json.loads((out[prefix] / "report.json").read_text())
        assert _global_symbols(report, prefix) == [], "every global symbol carries the model's prefix"
        assert report["arena"] == "caller" and report["formats"] == ["cmake", "zephyr", "arduino", "platformio", "plain"]
    app = _app(tmp_path / "app", models)
    sanitize = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
    _cmake(app, tmp_path / "b", f"-DWAKE_DIR={out['wake']}", f"-DCMD_DIR={out['cmd']}", "-DCMAKE_BUILD_TYPE=None",
           f"-DCMAKE_C_FLAGS=-Werror {sanitize}", f"-DCMAKE_EXE_LINKER_FLAGS={sanitize}")  # fmt: skip
    proc = subprocess.run([str(tmp_path / "b" / "app")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_outputs(_parse(proc.stdout), _references(models, out["cmd_q"]))

    # Both headers from C++ (-pedantic, every warning an error).
    cpp = tmp_path / "both.cpp"
    cpp.write_text('#include "wake.h"\n#include "cmd.h"\n'
                   "int main() { return (int)(wake_arena_bytes() + cmd_arena_bytes() == 0u); }\n")  # fmt: skip
    proc = subprocess.run(["g++", "-std=c++11", "-Wall", "-Wextra", "-pedantic", "-Werror", "-c", str(cpp),
                           "-I", str(out["wake"] / "src"), "-I", str(out["cmd"] / "src"), "-o", str(tmp_path / "both.o")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr

    # The same folder, by the other ecosystems' layouts.
    wake = out["wake"]
    for rel in ("CMakeLists.txt", "zephyr/module.yml", "zephyr/CMakeLists.txt", "zephyr/Kconfig",
                "library.properties", "library.json", "wake.mk", "examples/wake_example/wake_example.ino",
                "src/wake.h", "src/wake.c", "src/wake_ec/wake_ec_runtime.c", "README.md"):  # fmt: skip
        assert (wake / rel).is_file(), rel
    module = (wake / "zephyr" / "module.yml").read_text()
    assert "cmake: zephyr" in module and "kconfig: zephyr/Kconfig" in module
    zephyr_cmake = (wake / "zephyr" / "CMakeLists.txt").read_text()
    listed = re.findall(r"\$\{ZEPHYR_CURRENT_MODULE_DIR\}/(\S+\.c)", zephyr_cmake)
    assert sorted(listed) == sorted(p.relative_to(wake).as_posix() for p in (wake / "src").rglob("*.c"))
    assert "config EDGECOMP_WAKE" in (wake / "zephyr" / "Kconfig").read_text()
    props = dict(ln.split("=", 1) for ln in (wake / "library.properties").read_text().splitlines()
                 if "=" in ln and not ln.startswith("#"))  # fmt: skip
    assert props["name"] == "wake" and props["includes"] == "wake.h"
    assert json.loads((wake / "library.json").read_text())["build"]["flags"] == ["-O2", "-lm"]

    # The Arduino example sketch, as the Arduino builder would compile it (C++), on a stub core.
    stub = _arduino_stub(tmp_path / "stub")
    sketch = tmp_path / "sketch.cpp"
    sketch.write_text('#include <Arduino.h>\n' + (wake / "examples/wake_example/wake_example.ino").read_text()
                      + "\nint main() { setup(); return 0; }\n")  # fmt: skip
    objs = []  # the library's C as C (as the Arduino builder compiles .c files), the sketch as C++
    for c in sorted((wake / "src").rglob("*.c")):
        objs.append(str(tmp_path / (c.stem + ".o")))
        subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(wake / "src"), "-c", str(c),
                        "-o", objs[-1]], check=True)  # fmt: skip
    proc = subprocess.run(["g++", "-std=gnu++17", "-Wall", "-Wextra", "-Werror", "-I", str(stub), "-I", str(wake / "src"),
                           str(sketch), *objs, "-lm", "-o", str(tmp_path / "sketch")], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Plain: a Makefile of the user's that includes the fragment.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "main.c").write_text(APP_C)
    (plain / "inputs.h").write_text(_inputs_h(models))
    (plain / "Makefile").write_text(
        f"include {out['wake']}/wake.mk\ninclude {out['cmd']}/cmd.mk\n"
        "app: main.c $(WAKE_SRCS) $(CMD_SRCS)\n"
        "\t$(CC) $(WAKE_CFLAGS) $(CMD_CFLAGS) $(WAKE_ARCH_FLAGS) -Wall -Wextra -Werror -o $@ $^ $(WAKE_LDLIBS) $(CMD_LDLIBS)\n"
    )  # fmt: skip
    subprocess.run(["make", "-C", str(plain)], check=True, capture_output=True)
    proc = subprocess.run([str(plain / "app")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_outputs(_parse(proc.stdout), _references(models, out["cmd_q"]))


def _run_in_qemu(target, elf: Path) -> str:
    """What the firmware prints on its UART until it says done (or failed) and exits 0."""
    with QemuProcess(target, elf) as qemu:
        link = SerialLink(qemu.url)
        text = b""
        try:
            while b"done\n" not in text and b"failed" not in text:
                data = link.read(0.5)
                if not data and qemu.proc.poll() is not None:  # exited, and all it wrote read
                    break
                text += data
        finally:
            link.close()
        assert qemu.exited(10.0) and qemu.proc.returncode == 0, text.decode(errors="replace")
    return text.decode()


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_two_models_in_one_cortex_m7_firmware(models, tmp_path):
    """The cortex-m7 exports in one firmware built by CMake with a toolchain file that sets no core
    flags (the libraries' usage requirements bring them), on edgecomp's own start-up code and port,
    run in QEMU: both outputs match, and every global of either model carries its prefix. The same
    folders as Zephyr modules make another firmware (Zephyr's CMake functions stubbed, the board's
    flags from the toolchain), and the Arduino example sketch compiles for the core as C++."""
    out = _export_pair(models, "cortex-m7", tmp_path / "exp", "cmake,zephyr,arduino")
    target = load_target("cortex-m7")
    refs = _references(models, out["cmd_q"])
    port = tmp_path / "port"
    port_files(target).write(port)
    (tmp_path / "arm.cmake").write_text(ARM_TOOLCHAIN)
    app = _app(tmp_path / "app", models)
    _cmake(app, tmp_path / "b", f"-DWAKE_DIR={out['wake']}", f"-DCMD_DIR={out['cmd']}", f"-DPORT_DIR={port}",
           f"-DCMAKE_TOOLCHAIN_FILE={tmp_path / 'arm.cmake'}", "-DCMAKE_BUILD_TYPE=None", "-DCMAKE_C_FLAGS=-Werror")  # fmt: skip
    elf = tmp_path / "b" / "app"
    flags = (tmp_path / "b" / "CMakeFiles" / "app.dir" / "flags.make").read_text()
    assert "-mcpu=cortex-m7" in flags and "-mfloat-abi=hard" in flags  # from the libraries, not the app
    nm = subprocess.run(["arm-none-eabi-nm", "-g", "--defined-only", str(elf)], capture_output=True, text=True).stdout
    model_syms = [ln.split()[-1] for ln in nm.splitlines() if "wake" in ln or "cmd" in ln]
    assert model_syms and all(s.startswith(("wake_", "cmd_")) for s in model_syms), model_syms
    text = _run_in_qemu(target, elf)
    _check_outputs(_parse(text), refs)
    from edgecomp.build import elf_sizes

    sizes = elf_sizes(elf)
    ticks = [int(t) for t in re.search(r"^ticks (\d+) (\d+)$", text, re.M).groups()]
    print(f"two-model cortex-m7 firmware: flash {sizes.flash_bytes} B, RAM {sizes.ram_bytes} B; "
          f"instructions wake {ticks[0] * 40}, cmd {ticks[1] * 40}")  # SysTick at 25 MHz: 40 per tick

    # Zephyr: both folders as modules, each enabled by the symbol its own Kconfig declares.
    zapp = _app(tmp_path / "zapp", models)
    (zapp / "CMakeLists.txt").write_text(ZEPHYR_APP_CMAKE)
    configs = [re.search(r"^config (\w+)$", (out[p] / "zephyr" / "Kconfig").read_text(), re.M).group(1)
               for p in ("wake", "cmd")]  # fmt: skip
    board = " ".join(target.arch_flags)
    _cmake(zapp, tmp_path / "zb", f"-DZEPHYR_EXTRA_MODULES={out['wake']};{out['cmd']}", f"-DPORT_DIR={port}",
           *(f"-DCONFIG_{c}=y" for c in configs), f"-DCMAKE_TOOLCHAIN_FILE={tmp_path / 'arm.cmake'}",
           "-DCMAKE_BUILD_TYPE=None", f"-DCMAKE_C_FLAGS={board} -Werror", f"-DCMAKE_EXE_LINKER_FLAGS={board}")  # fmt: skip
    _check_outputs(_parse(_run_in_qemu(target, tmp_path / "zb" / "app")), refs)

    # Arduino: the library's C as C and the example sketch as C++ for the core, on a stub Arduino.h.
    wake = out["wake"]
    stub = _arduino_stub(tmp_path / "stub")
    sketch = tmp_path / "sketch.cpp"
    sketch.write_text("#include <Arduino.h>\n" + (wake / "examples/wake_example/wake_example.ino").read_text())
    for src, tool, std in [*((c, "arm-none-eabi-gcc", "-std=c99") for c in sorted((wake / "src").rglob("*.c"))),
                           (sketch, "arm-none-eabi-g++", "-std=gnu++17")]:  # fmt: skip
        proc = subprocess.run([tool, *target.arch_flags, std, "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(stub),
                               "-I", str(wake / "src"), "-c", str(src), "-o", str(tmp_path / (src.stem + ".o"))],
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]


NATIVE_BUILDER = """
from SCons.Script import Default, DefaultEnvironment

env = DefaultEnvironment()
env.Replace(PROGNAME="program")
Default([env.BuildProgram()])
"""

# A Cortex-M platform's builder, as PlatformIO's ARM platforms (ststm32...) set it up: the GNU Arm
# toolchain, the core's flags on every object and the link, the board's linker script.
ARM_BUILDER = """
from SCons.Script import Default, DefaultEnvironment

env = DefaultEnvironment()
core = {flags!r}
env.Replace(CC="arm-none-eabi-gcc", CXX="arm-none-eabi-g++", AS="arm-none-eabi-as", AR="arm-none-eabi-ar",
            RANLIB="arm-none-eabi-ranlib", LINK="arm-none-eabi-gcc", PROGNAME="firmware", PROGSUFFIX=".elf")
env.Append(CCFLAGS=core, LINKFLAGS=core + ["-T{ldscript}", "-nostartfiles", "--specs=nano.specs", "-Wl,--gc-sections",
                                           "-Wl,--no-warn-rwx-segments"])
Default([env.BuildProgram()])
"""


def _offline_platformio(root: Path, builder: str = NATIVE_BUILDER) -> tuple[str, dict[str, str]]:
    """A PlatformIO core directory that builds without its registry: tool-scons from PyPI's SCons
    4.11.1 (what PlatformIO's tool-scons 4.41101.0 holds), and a development platform of our own
    whose build script is `builder` (host gcc; or the Arm toolchain for a Cortex-M)."""
    import SCons

    core = root / "core"
    scons = core / "packages" / "tool-scons"
    shutil.copytree(Path(SCons.__file__).parent, scons / "SCons")
    (scons / "scons.py").write_text("import os, sys\nsys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"
                                    "from SCons.Script.Main import main\nmain()\n")  # fmt: skip
    (scons / "package.json").write_text(json.dumps({"name": "tool-scons", "version": "4.41101.0"}))
    (scons / ".piopm").write_text(json.dumps({"type": "tool", "name": "tool-scons", "version": "4.41101.0", "spec": {
        "owner": "platformio", "id": None, "name": "tool-scons", "requirements": None, "uri": None}}))  # fmt: skip
    platform = root / "platform-ecnative"
    (platform / "builder").mkdir(parents=True)
    (platform / "platform.json").write_text(json.dumps({"name": "ecnative", "title": "host gcc (offline)",
                                                        "version": "0.0.1", "engines": {"platformio": "^6"},
                                                        "frameworks": {}, "packages": {}}))  # fmt: skip
    (platform / "platform.py").write_text("from platformio.public import PlatformBase\n\n\n"
                                          "class EcnativePlatform(PlatformBase):\n    pass\n")  # fmt: skip
    (platform / "builder" / "main.py").write_text(builder)
    env = {**os.environ, "PLATFORMIO_CORE_DIR": str(core), "PLATFORMIO_NO_ANSI": "true",
           "PLATFORMIO_SETTING_ENABLE_TELEMETRY": "No", "PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL": "3650"}  # fmt: skip
    return f"file://{platform}", env


def test_platformio_native_env_builds_two_exports(models, tmp_path):
    pio = Path(sys.executable).with_name("pio")
    assert pio.exists(), "PlatformIO's CLI is installed with edgecomp's dev extra"
    out = _export_pair(models, "host", tmp_path / "exp", "platformio")
    platform, env = _offline_platformio(tmp_path / "pio")
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.c").write_text(APP_C)
    (proj / "src" / "inputs.h").write_text(_inputs_h(models))
    (proj / "platformio.ini").write_text(
        f"[env:native]\nplatform = {platform}\n"
        f"lib_deps =\n  symlink://{out['wake']}\n  symlink://{out['cmd']}\n"
        "build_flags = -Wall -Wextra -Werror\n"
    )
    proc = subprocess.run([str(pio), "run", "-e", "native"], cwd=proj, capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Dependency Graph" in proc.stdout and "wake" in proc.stdout and "cmd" in proc.stdout
    run = subprocess.run([str(proj / ".pio" / "build" / "native" / "program")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    _check_outputs(_parse(run.stdout), _references(models, out["cmd_q"]))


@pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_platformio_cortex_m7_env_builds_two_exports(models, tmp_path):
    """`pio run` for a Cortex-M7 environment (an offline platform with the Arm toolchain): the two
    exported libraries and edgecomp's port in one firmware, run in QEMU, both outputs checked."""
    pio = Path(sys.executable).with_name("pio")
    target = load_target("cortex-m7")
    out = _export_pair(models, "cortex-m7", tmp_path / "exp", "platformio")
    proj = tmp_path / "proj"
    port_files(target).write(proj / "port")
    shutil.copytree(proj / "port" / "ec", proj / "src" / "port")
    builder = ARM_BUILDER.format(flags=list(target.arch_flags), ldscript=proj / "port" / "linker.ld")
    platform, env = _offline_platformio(tmp_path / "pio", builder)
    (proj / "src" / "main.c").write_text(APP_C)
    (proj / "src" / "inputs.h").write_text(_inputs_h(models))
    (proj / "platformio.ini").write_text(
        f"[env:m7]\nplatform = {platform}\n"
        f"lib_deps =\n  symlink://{out['wake']}\n  symlink://{out['cmd']}\n"
        "build_flags = -Wall -Wextra -Werror -Isrc/port\n"
    )
    proc = subprocess.run([str(pio), "run", "-e", "m7"], cwd=proj, capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    elf = proj / ".pio" / "build" / "m7" / "firmware.elf"
    with elf.open("rb") as f:
        assert ELFFile(f)["e_machine"] == "EM_ARM"
    _check_outputs(_parse(_run_in_qemu(target, elf)), _references(models, out["cmd_q"]))


def test_named_build_runs_through_the_harness(models, tmp_path):
    """`build --name --arena caller`: the harness (ec_api.h) works with any prefix; ASan/UBSan."""
    options = BuildOptions(name="wake", arena="caller", sanitize=True, extra_cflags="-Werror")
    result = build(models["dir"] / "wake.onnx", load_target("host"), tmp_path / "b", options, **QUIET)
    assert (result.outdir / "wake.h").is_file() and not (result.outdir / "model.h").exists()
    (run,) = run_samples(result, [[models["wake_x"]]])
    np.testing.assert_allclose(run.outputs[0], Reference(result.model).run([models["wake_x"]])[0], rtol=1e-5, atol=1e-6)


def test_cli_export_writes_only_the_chosen_formats(models, tmp_path, capsys):
    out = tmp_path / "kws"
    assert cli_main(["export", str(models["dir"] / "wake.onnx"), "--target", "host", "--format", "zephyr,platformio",
                     "--name", "kws", "-o", str(out)]) == 0  # fmt: skip
    assert "kws_init" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["formats"] == ["zephyr", "platformio"] and report["arena"] == "caller"
    assert (out / "zephyr" / "module.yml").is_file() and (out / "library.json").is_file()
    assert not (out / "CMakeLists.txt").exists() and not (out / "library.properties").exists()
    assert sorted(report["files"]) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
                                             and p.name != "report.json")  # fmt: skip


@pytest.mark.parametrize("args, message", [
    (["--name", "ec"], "reserved"),
    (["--name", "9lives"], "C identifier"),
    (["--format", "bazel"], "--format"),
    (["--sign", "key.pem"], "not to an export"),
    (["--max-ram", "64K"], "measure a firmware"),
])  # fmt: skip
def test_export_refuses_bad_arguments(models, tmp_path, capsys, args, message):
    code = cli_main(["export", str(models["dir"] / "wake.onnx"), "--target", "host", "-o", str(tmp_path / "o"), *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
