"""Fine-tuning and GLUE evaluation (issue #15, in progress): so far the GLUE metrics."""
