"""The lowest layer: helpers every package may use and that import nothing else of robustact.

:mod:`robustact.core.spec` is the one ``name:key=value,...`` grammar (activations, attacks, the
CLI's ``--param``) and the generic check of keyword parameters against a callable's signature.
"""
