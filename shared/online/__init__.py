"""Online experiments, pure: interleaving, credit, betting and the decision rule (no store, no I/O)."""
