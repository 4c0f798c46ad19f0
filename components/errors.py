"""The exception types users see."""


class VidopsError(Exception):
    """A problem with the user's input or environment; the message names the file or key and what is wrong."""


class Unreachable(VidopsError, ConnectionError):
    """A service (the MLflow server, an S3 store) that did not answer; the message names it. A ConnectionError too, so
    the flows retry it as the network's failure (`flows.pipeline.transient`)."""
