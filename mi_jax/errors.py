"""The project's error base: a problem with what a person gave (config, files, data, checkpoints).

launch.py prints such an error's message as it is, without a traceback: the message names what is
wrong and what to do. Every other exception is a bug and keeps its traceback.
"""


class MiJaxError(Exception):
  """An error whose message is the whole story for the user."""


class Terminated(BaseException):
  """SIGTERM (a cluster's pre-emption or `scancel`) raised as an exception, so the job unwinds like Ctrl-C.

  A BaseException, like KeyboardInterrupt: no `except Exception` on the way swallows it.
  """
