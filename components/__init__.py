"""vidops building blocks: one module per lifecycle stage, free of Prefect.

Each stage offers one entry point that takes typed params and paths and returns a
small typed result, so the same function runs in a Prefect task, a DVC stage and a test.
"""

__version__ = "0.1.0"
