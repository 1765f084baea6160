"""Hypothesis strategies shared by the tests of the wire format."""

import hypothesis.strategies as st


def msgpack_values(max_leaves: int = 30, max_text: int = 40, max_bytes: int = 60,
                   max_size: int = 6):
    """Values that msgpack round-trips to themselves (no NaN; lists rather than tuples)."""
    scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
               | st.floats(allow_nan=False) | st.text(max_size=max_text)
               | st.binary(max_size=max_bytes))
    return st.recursive(
        scalars,
        lambda children: (st.lists(children, max_size=max_size)
                          | st.dictionaries(st.text(max_size=10)
                                            | st.integers(-(2**63), 2**63 - 1),
                                            children, max_size=max_size)),
        max_leaves=max_leaves)
