"""How passes over a large ``X`` are cut: blocks of about a million entries.

One fact shared by the scikit-learn layer and the core (a leaf module: NumPy
only, imported by both): a pass over ``X`` a block at a time needs no
temporary the size of ``X``, and a product with ``X`` of this size or more is
worth spreading over threads.
"""

BLOCK_ENTRIES = 2**20


def block_rows(n_features: int) -> int:
    """Rows per block of ``n_features`` columns (at least one)."""
    return max(1, BLOCK_ENTRIES // max(1, n_features))
