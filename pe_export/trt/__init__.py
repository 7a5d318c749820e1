"""TensorRT engines: strongly typed builds from precision ONNX files, and an engine runner.

TensorRT is an optional extra (`pip install 'pe-export[tensorrt]'`, from NVIDIA's index) and is
imported only inside the functions that need it.
"""
