"""What one trial runs: data sets, models, the training loop and the Ray Tune trainable.

vocabulary (the words trials are recorded in) and datasets (the data-set catalog) import
nothing; config validates input once into a TrialConfig; data, models and training take it;
trainable (the only module that needs Ray) and train_command run it.
"""
