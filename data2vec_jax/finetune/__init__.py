"""Fine-tuning and GLUE evaluation (issue #15, in progress): GLUE metrics, the GLUE TSV reader,
and the sentence classifier with its loss."""
