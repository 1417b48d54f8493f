"""Error classes that carry their exit code: the CLI prints the message as one sentence.

``UsageError`` (exit 2): the command, a setting or an input artefact is wrong; nothing ran.
``StepFailed`` (exit 1): the step ran and failed (e.g. an input image could not be read).
"""


class MedgenError(Exception):
    exit_code = 1


class UsageError(MedgenError, ValueError):
    exit_code = 2


class StepFailed(MedgenError, ValueError):
    exit_code = 1
