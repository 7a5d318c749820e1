"""On-device programs for phones, Apple silicon and ARM boards: ExecuTorch `.pte` files lowered from the
export-friendly tower (`model/edge.py`), proven on the runtime's own interpreter before they appear."""
