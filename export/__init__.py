"""ONNX export of tickets (importable as lipdeploy.export).

``export_onnx(ticket, path, ...)`` writes the compacted network as an ONNX model that ONNX Runtime alone runs, with
sparse weight storage (:mod:`.sparse_pack`), optional fp16 storage or int8 quantisation, metadata and a manifest.
"""

from .onnx_export import ExportError, ExportSummary, export_onnx, manifest_path_for, ort_session

__all__ = ["ExportError", "ExportSummary", "export_onnx", "manifest_path_for", "ort_session"]
