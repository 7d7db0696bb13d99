"""The CIFAR-10 adversarial examples challenge (MadryLab/cifar10_challenge) in TF2/Keras."""
