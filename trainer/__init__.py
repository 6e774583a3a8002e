"""Training, experiments and ONNX export for the xray_infer models (needs the ``train`` extra)."""
