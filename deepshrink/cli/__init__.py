"""The ``deepshrink`` command line: the top layer, built on the library's public verbs and the experiments."""

from .main import main

__all__ = ["main"]
