"""Natural training (`training_method: "natural"`): the challenge's loss on the clean batch,
in training mode (batch statistics; batch norm's averages updated once), no attack: the
baseline each method is measured against, and the training of the networks whose authors
claim robustness from the architecture alone (the neural ODEs). `epsilon` stays the
evaluation's and the guard's ε."""
from common.attacks import pgd
from common.methods import base

NAME = 'natural'
SUMMARY = 'the loss on the clean batch, no attack (the baseline)'


def keys(challenge_name):
  del challenge_name
  return ()


class Natural(base.Method):
  """The loss on x."""

  def __init__(self, params: pgd.PGDParams):
    self.params = params  # the evaluation's attack: the trainer reports its ε

  def prepare(self, x, seed, rows, examples):
    return ()

  def gradients(self, step, x, y, inputs):
    def loss():
      logits = step.forward(x, update_state=True)
      return step.loss(y, logits), logits
    gradients, logits = base.descend(step, loss)
    return base.Result(gradients, logits, x)


def check(config):
  base.refuse_attack_settings(config, '')


def build(challenge, config, params: pgd.PGDParams) -> Natural:
  del challenge, config
  return Natural(params)
