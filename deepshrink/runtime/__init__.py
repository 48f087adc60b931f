"""Runtime: inference straight from the compressed form (sparse codebook kernels and their modules).

May import the codec layer and ``deepshrink.errors``; never transforms, experiments or cli.
"""
