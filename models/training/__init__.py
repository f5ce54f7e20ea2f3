"""Training a model kind on the training set: device choice, full training and warm start."""
