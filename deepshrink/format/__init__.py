"""File layer: the ``.dsz`` container (spec in ``docs/format.md``): constants, writer, reader, validation, atomic writes.

May import the codec layer and ``deepshrink.errors``; never transforms, runtime, experiments or cli.
"""
