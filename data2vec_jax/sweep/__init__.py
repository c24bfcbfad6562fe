"""Ablation sweeps: one cell per value of an axis (pretrain -> export -> fine-tune grid -> scores)
and the table that puts the cells next to the paper (`python sweep.py`, README "Ablation sweeps").

definition: the sweep as data (configs/sweeps/*.py) -> its cells and their commands;
runner: runs cells as subprocesses of train.py and finetune.py, resumable, one at a time;
table: results.csv, results.md and the axis plot from whatever cells have finished;
paper: the paper's numbers the table quotes.
"""
