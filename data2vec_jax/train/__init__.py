"""Training: config -> recipe and plan, the sharded state and jitted step, checkpoints, health
guards, metrics, and the loop (`loop.train_and_evaluate`)."""
