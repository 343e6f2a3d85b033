"""The ground floor: typed parameters, the data contract, atomic I/O and versioning.

Nothing here imports another cameo package.
"""
