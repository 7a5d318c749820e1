"""OpenVINO IR: .xml/.bin files converted from the fp32 or int8 Q/DQ ONNX, proven on OpenVINO.

OpenVINO is an optional extra (`pip install 'pe-export[openvino]'`), imported only inside the
functions that need it.
"""
