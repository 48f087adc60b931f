"""Transforms: the in-place verbs that change a user's model during training (pruning masks, weight sharing).

May import the layers layer and ``deepshrink.errors``; never format, runtime, experiments or cli.
"""
