"""The shipped evaluation protocols, one JSON file per ``name@version`` (data, no code).

Each file says which attacks an evaluation runs, in which order, with which role and budget, the
ε grid as multiples of the main ε, where the model-specific adaptive attacks go, and what changed
from the previous version and why. Old versions stay shipped so an old result can be rerun
exactly (``standard@1``). :mod:`robustact.evaluate.protocols` is the one reader of these files;
``robustact protocols`` lists them. A user protocol is a copy of one of them, edited and passed
as a path (``--protocol my.json``).

Why a package of its own at the bottom of the layers: the files are read with
:mod:`importlib.resources`, and a package that imports nothing cannot take part in a cycle.
"""
