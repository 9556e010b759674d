"""First-stage retrieval (BM25, the catalogue index) and the served pipeline that fuses scorers."""
