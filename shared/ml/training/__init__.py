"""Training a version from feedback: dataset, fine-tuning, evaluation, the gate, reports, a run."""
