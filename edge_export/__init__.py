"""Export a trained stage-1 + stage-2 pair as a self-contained ONNX model folder for `edge_runtime`:
`python -m edge_export --help` (console script `sagecast-edge-export`). The one place here that imports torch."""
