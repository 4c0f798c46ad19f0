"""The one exception type users see."""


class VidopsError(Exception):
    """A problem with the user's input or environment; the message names the file or key and what is wrong."""
