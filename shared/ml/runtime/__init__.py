"""Running models on this machine: loading, devices, ONNX Runtime twins, the embedder, stored vectors."""
