"""What one trial runs: data sets, models, the training loop and the Ray Tune trainable.

Submodules are imported on use (workers.config, workers.data, workers.models,
workers.training, workers.trainable, workers.train_command); ray is needed only by
workers.trainable.
"""
