"""What every run shares, pretraining, fine-tuning and the sweep alike: the sharding mesh and its
logical axis rules, the optimizer (AdamW, schedules, the pad rows' masked update), checkpoints,
metric writing, preemption (SIGTERM) and the one-line workdir errors (a full disk, an unwritable
directory). Nothing here knows an objective or a task."""
