"""A task vidops does not ship, in a folder of its own, installed as a package would be (an entry point of the group
`vidops.tasks`): which motion a clip shows, told by its mean colour alone. A weak model, which is all the test needs."""

from colour_task.spec import SPEC

__all__ = ["SPEC"]
