"""The data2vec-text encoder: its config, the transformer, and the heads (regression, MLM)."""
