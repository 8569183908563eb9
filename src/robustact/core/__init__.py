"""The bottom layer: input validation, atomic file storage, and nothing that imports upward.

Every other package may import from here; this package imports no other part of robustact.
"""
