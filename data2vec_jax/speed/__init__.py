"""Speed-only machinery: token packing, canonical CPU matmuls, malloc settings, GPU XLA flags.

Nothing here changes a computed value; the model and the loss use these through narrow
interfaces (a packing layout, a projection) without depending on their details.
"""
