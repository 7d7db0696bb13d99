"""PGD adversarial training (Madry et al. 2018), the original's method and the default
(`training_method: "madry"`): the configured training attack (`training_attack`: the
configured PGD, fewer or other steps, FGSM with a random start or N-FGSM;
common.attacks.pgd) from its random start, then the challenge's loss on its examples in
training mode (batch statistics; batch norm's averages updated once), batch norm in the
attack as the challenge's `training_attack_batch_norm` says (the originals': MNIST has
none, CIFAR-10 runs its attack in training mode)."""
from common.attacks import pgd
from common.methods import base

NAME = 'madry'
SUMMARY = "the loss on the training attack's examples (the original)"


def keys(challenge_name):
  del challenge_name
  return ()


class Madry(base.Method):
  """The configured training attack from its random start, then the loss on its examples."""

  def __init__(self, params: pgd.PGDParams):
    self.params = params

  def prepare(self, x, seed, rows, examples):
    return (pgd.starting_points(x, self.params, seed, rows=rows)[0],)

  def gradients(self, step, x, y, inputs):
    x_adv = pgd.pgd(step.attack_model, x, y, self.params, loss_scale=step.loss_scale,
                    start=inputs[0])

    def loss():
      logits = step.forward(x_adv, update_state=True)
      return step.loss(y, logits), logits
    gradients, logits = base.descend(step, loss)
    return base.Result(gradients, logits, x_adv)


def build(challenge, config, params: pgd.PGDParams) -> Madry:
  del challenge
  return Madry(base.configured_attack(config, params))
