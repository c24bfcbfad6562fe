"""What is learned: masking, the EMA teacher, its targets and the loss.

`loss.loss_fn` is the paper's loss read plainly (every position); `execution` decides how a
training step runs it faster and `training_loss` (the trainer's loss for every objective) does
so, proved equal by the tests.
"""
