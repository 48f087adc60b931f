"""Reports: the paper's per-layer table and figures, computed from a file's header and streams alone, never a model.

May import the format and codec layers; never transforms, runtime, experiments or cli.
"""
