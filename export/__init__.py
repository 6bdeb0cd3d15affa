"""ONNX export of tickets (importable as lipdeploy.export)."""
