"""The MNIST adversarial examples challenge (MadryLab/mnist_challenge) in TF2/Keras."""
