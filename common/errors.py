"""Errors a user can act on. The command-line wrapper prints them in one line, no traceback."""
import numpy as np


class ChallengeError(Exception):
  """Bad input or a missing resource: the message names it and says what to do."""
  exit_code = 1


class UnreadableCheckpoint(ChallengeError):
  """A checkpoint whose files are there but cannot be read (truncated, corrupt)."""


class NonFiniteLogits(ChallengeError):
  """A model returned NaN or infinite logits: its predictions cannot be scored."""

  def __init__(self, model: str, count: int, total: int, of: str = 'examples'):
    super().__init__(f'{model} returned logits that are not finite (NaN or infinite) for '
                     f'{count} of {total} {of}; they cannot be scored as predictions: check '
                     'the model (diverged weights, a division by zero)')


def require_finite_logits(logits, model: str, of: str) -> None:
  """Raises NonFiniteLogits naming `model` if a row of `logits` (numpy, [n, classes]) holds a
  NaN or an infinity: argmax would score NaN as class 0."""
  not_finite = int(np.sum(~np.isfinite(logits).all(axis=1)))
  if not_finite:
    raise NonFiniteLogits(model, not_finite, len(logits), of)


class InvalidSubmission(ChallengeError):
  """A submitted .npy file that must not be scored."""
  exit_code = 2


# One type per kind of invalid submission, all exit code 2.
class SubmissionFormatError(InvalidSubmission):
  """Not a readable .npy file: missing, a pickle, an archive, truncated, padded."""


class SubmissionDtypeError(InvalidSubmission):
  """An element type that cannot hold pixels (object, bool, complex, string, structured)."""


class SubmissionShapeError(InvalidSubmission):
  """Not the test set's shape."""


class SubmissionRangeError(InvalidSubmission):
  """Values outside the pixel range, NaN or infinite."""


class SubmissionPerturbationError(InvalidSubmission):
  """Farther than ε from the test set (ℓ∞)."""
