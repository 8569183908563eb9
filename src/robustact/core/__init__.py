"""The bottom layer: validation, the one spec grammar, atomic file storage; no upward imports.

Every other package may import from here; this package imports no other part of robustact.
:mod:`robustact.core.spec` is the one ``name:key=value,...`` grammar (activations, attacks, the
CLI's ``--param``) and the generic check of keyword parameters against a callable's signature.
:mod:`robustact.core.budget` is the one rule for ε (norms, range, "8/255", defaults);
:mod:`robustact.core.runfolder` the one run-folder mechanism every command writes through.
"""
