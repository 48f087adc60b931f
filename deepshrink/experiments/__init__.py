"""The paper harness: data sets, the paper's architectures, a plain training loop, ``reproduce``.

Built on the public library; the core never imports it. Needs the ``experiments`` extra (tqdm).
"""
