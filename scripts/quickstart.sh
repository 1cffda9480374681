#!/usr/bin/env bash
# README command 1: set up, then build the bundled example for a Cortex-M7 and run it in QEMU,
# checked against onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/edgecomp build examples/tiny_cnn.onnx --target cortex-m7
.venv/bin/edgecomp run examples/tiny_cnn.onnx --target cortex-m7 --input examples/tiny_cnn_input.npy
.venv/bin/edgecomp profile examples/tiny_cnn.onnx --target cortex-m7 --json build/tiny_cnn-cortex-m7/profile.json
