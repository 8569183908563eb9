"""The papers' experiments as data: one JSON file per ``name@version``, read by
:mod:`robustact.runs.reproduce` (``robustact reproduce NAME``).

A file says which models to train (or load) and how, which defenses to apply to each, which of the
paper's attacks to run (an evaluation protocol's entries, run by the same engine as ``robustact
evaluate``), at which ε and on how many images, what the paper reported, and the short settings of
``--quick``. A user copies one, edits it and passes the path. Data only: no code path per paper.
"""
