"""The paper's GLUE dev numbers that a sweep's table quotes next to its own.

Source: data2vec (Baevski et al. 2022, arXiv 2202.03555 v3) Table 4, Base models, single-task
fine-tuning, GLUE dev; docs/reference/finetuning_reference.md §5.1. MNLI is dev matched (the Avg.
column counts it once); MRPC and QQP are (acc + F1) / 2; STS-B (Pearson + Spearman) / 2; CoLA
Matthews correlation; the others accuracy. The data2vec rows are means over 5 fine-tuning runs.

The other NLP ablations have no numbers in the paper's text: Figure 2(b) (top-K layer averaging)
is a plot whose values were never published as numbers, and the target-type, loss and masking
parameter tables are speech only (§5.2 of the reference). Their sweeps show no paper column.
"""

from __future__ import annotations

SOURCE = "data2vec paper (arXiv 2202.03555 v3), Table 4"

# Row -> task -> score (x100, as printed); "average" is the printed Avg. column.
TABLE4: dict[str, dict[str, float]] = {
  "Baseline (RoBERTa re-trained in the BERT setup)": {
    "mnli": 84.1,
    "qnli": 90.4,
    "rte": 69.3,
    "mrpc": 89.0,
    "qqp": 89.3,
    "stsb": 88.9,
    "cola": 56.8,
    "sst2": 92.3,
    "average": 82.5,
  },
  "data2vec": {
    "mnli": 83.2,
    "qnli": 90.9,
    "rte": 67.0,
    "mrpc": 90.2,
    "qqp": 89.1,
    "stsb": 87.2,
    "cola": 62.2,
    "sst2": 91.8,
    "average": 82.7,
  },
  "+ wav2vec 2.0 masking": {
    "mnli": 82.8,
    "qnli": 91.1,
    "rte": 69.9,
    "mrpc": 90.0,
    "qqp": 89.0,
    "stsb": 87.7,
    "cola": 60.3,
    "sst2": 92.4,
    "average": 82.9,
  },
}
