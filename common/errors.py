"""Errors a user can act on. The command-line wrapper prints them in one line, no traceback."""


class ChallengeError(Exception):
  """Bad input or a missing resource: the message names it and says what to do."""
  exit_code = 1


class InvalidSubmission(ChallengeError):
  """A submitted .npy file that must not be scored."""
  exit_code = 2
