"""Model layer: which module types compress (the registry) and which tensors are tied between modules.

May import torch and ``deepshrink.errors``; nothing from transforms, format, runtime, experiments or cli.
"""
