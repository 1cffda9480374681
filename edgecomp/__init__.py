"""edgecomp: compile ONNX models to dependency-free C99 and Cortex-M firmware through Apache TVM."""

__version__ = "0.1.0"
