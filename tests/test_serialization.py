"""The serializer: round trips, out-of-band numpy buffers read back zero-copy, contained refs.

Pure unit tests: no node is started (ObjectRefs made without a runtime are not counted).
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyactor._private import serialization
from pyactor._private.object_ref import ObjectRef
from pyactor._private.serialization import ALIGNMENT, deserialize, serialize

plain_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.text() | st.binary() | st.complex_numbers(allow_nan=False))
plain_values = st.recursive(
    plain_scalars,
    lambda children: (st.lists(children, max_size=5)
                      | st.tuples(children, children)
                      | st.dictionaries(st.text(max_size=5) | st.integers(), children,
                                        max_size=5)),
    max_leaves=20)

numeric_dtypes = (hnp.boolean_dtypes() | hnp.integer_dtypes() | hnp.unsigned_integer_dtypes()
                  | hnp.floating_dtypes() | hnp.complex_number_dtypes()
                  | hnp.datetime64_dtypes() | hnp.timedelta64_dtypes()
                  | hnp.byte_string_dtypes() | hnp.unicode_string_dtypes())
arrays = hnp.arrays(numeric_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                      max_side=6))


def store_like(value) -> memoryview:
    """Lay the value out in a read-only buffer, as it would sit in the shared-memory store."""
    serialized = serialize(value)
    out = bytearray(serialized.total_bytes)
    serialized.write_to(memoryview(out))
    return memoryview(bytes(out))


# numpy pickles datetime64/timedelta64 arrays and strided views in band (no buffer to export),
# and its own pickling then drops a non-native byte order (whatever the protocol).
IN_BAND_KINDS = "mM"


def assert_arrays_equal(got, expected, in_band=False):
    assert type(got) is np.ndarray
    if in_band or expected.dtype.kind in IN_BAND_KINDS:
        assert got.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=")
    else:
        assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@given(plain_values)
def test_plain_values_round_trip(value):
    """deserialize(serialize(v)) == v for nested built-in values, inline and store layouts."""
    assert deserialize(serialize(value).to_bytes()) == value
    assert deserialize(store_like(value)) == value


@given(plain_scalars)
def test_plain_to_bytes_is_the_general_layout_of_a_plain_value(value):
    """The worker's shortcut for plain returns gives byte for byte what serialize gives."""
    assert serialization.plain_to_bytes(value) == serialize(value).to_bytes()


class _Number(int):
    pass


@pytest.mark.parametrize("value", [[1], (1,), {"a": 1}, _Number(3), np.float64(1.5), ObjectRef])
def test_plain_to_bytes_declines_anything_but_the_exact_plain_types(value):
    """Containers, subclasses and other types (which may hold refs or buffers) are declined."""
    assert serialization.plain_to_bytes(value) is None


@given(arrays)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_numpy_arrays_round_trip(array):
    """Arrays of any dtype and shape (0-d and empty included) come back equal, same dtype."""
    assert_arrays_equal(deserialize(serialize(array).to_bytes()), array)
    assert_arrays_equal(deserialize(store_like(array)), array)


@given(arrays, st.sampled_from(["C", "F"]))
def test_arrays_read_from_the_store_are_read_only_views(array, order):
    """Read from a store buffer, a contiguous array views that buffer (no copy) and is
    read-only."""
    array = np.asarray(array, order=order)
    view = store_like(array)
    got = deserialize(view)
    assert_arrays_equal(got, array)
    if got.size and got.dtype.kind not in IN_BAND_KINDS:
        assert not got.flags.writeable
        base = np.frombuffer(view, dtype=np.uint8)
        assert np.shares_memory(got, base)


def test_buffers_are_aligned_and_total_bytes_is_exact():
    """Each out-of-band buffer starts 64-byte aligned; total_bytes is the laid-out size."""
    value = [np.arange(7, dtype=np.int8), np.ones((3, 5)), b"x" * 10, np.zeros(1)]
    serialized = serialize(value)
    assert len(serialized.buffers) == 3
    data = serialized.to_bytes()
    assert len(data) == serialized.total_bytes
    for i in range(3):
        offset, _length = serialization._BUFFER_ENTRY.unpack_from(
            data, serialization._HEADER.size + i * serialization._BUFFER_ENTRY.size)
        assert offset % ALIGNMENT == 0


@given(arrays, st.integers(1, 3))
def test_non_contiguous_arrays_round_trip(array, step):
    """Strided views (not contiguous) are pickled in band and still come back equal."""
    view = array[..., ::step] if array.ndim else array
    in_band = not (view.flags.c_contiguous or view.flags.f_contiguous)
    assert_arrays_equal(deserialize(serialize(view).to_bytes()), view.copy(), in_band)


def test_object_and_structured_arrays_round_trip():
    """Object arrays (pickled in band) and structured dtypes survive."""
    objects = np.array([{"a": 1}, None, "s"], dtype=object)
    got = deserialize(store_like(objects))
    assert list(got) == list(objects)
    structured = np.zeros(4, dtype=[("x", "<i4"), ("y", "<f8", (2,))])
    structured["x"] = [1, 2, 3, 4]
    assert_arrays_equal(deserialize(store_like(structured)), structured)


def test_float_specials_round_trip():
    """NaN and infinities survive (compared by their bit patterns)."""
    value = [math.nan, math.inf, -math.inf, np.array([np.nan, -0.0])]
    got = deserialize(serialize(value).to_bytes())
    assert math.isnan(got[0]) and got[1] == math.inf and got[2] == -math.inf
    assert got[3].tobytes() == value[3].tobytes()


def test_bytearray_and_memoryview_buffers_round_trip():
    """bytearray values round-trip as equal bytearrays."""
    value = {"buf": bytearray(b"abc" * 1000)}
    assert deserialize(store_like(value)) == value


def test_closures_and_main_style_classes_round_trip():
    """Lambdas and locally defined classes go by value (cloudpickle)."""
    class Local:
        def __init__(self, v):
            self.v = v

    factor = 3
    value = {"f": lambda x: x * factor, "obj": Local(5)}
    got = deserialize(serialize(value).to_bytes())
    assert got["f"](2) == 6 and got["obj"].v == 5


def make_ref(i: int) -> ObjectRef:
    return ObjectRef(bytes([i]) * 20, ["127.0.0.1", 1000 + i])


@given(st.lists(st.integers(0, 50), max_size=8), st.sampled_from(["list", "dict", "deep"]))
def test_contained_refs_are_collected(ids, shape):
    """Every ObjectRef inside a value is reported in contained_refs and comes back as a ref
    with the same id and owner."""
    refs = [make_ref(i) for i in ids]
    if shape == "list":
        value = refs
    elif shape == "dict":
        value = {str(k): r for k, r in enumerate(refs)}
    else:
        value = [(1, {"r": r, "a": np.zeros(3)}) for r in refs]
    serialized = serialize(value)
    assert sorted(r.id for r in serialized.contained_refs) == sorted(r.id for r in refs)
    got = deserialize(serialized.to_bytes())
    if shape == "list":
        back = got
    elif shape == "dict":
        back = [got[str(k)] for k in range(len(refs))]
    else:
        back = [item[1]["r"] for item in got]
    assert [(r.id, r.owner_address) for r in back] == [(r.id, r.owner_address) for r in refs]


def test_contained_refs_are_collected_per_call_and_nested_calls_do_not_mix():
    """A serialize() inside another (a __reduce__ that serializes) keeps its refs separate."""
    outer_ref, inner_ref = make_ref(1), make_ref(2)

    class SerializesOnPickle:
        def __reduce__(self):
            nested = serialize([inner_ref])
            assert [r.id for r in nested.contained_refs] == [inner_ref.id]
            return (str, ("x",))

    serialized = serialize([outer_ref, SerializesOnPickle()])
    assert [r.id for r in serialized.contained_refs] == [outer_ref.id]
    assert serialize(123).contained_refs == []


def test_bad_magic_is_rejected():
    """Bytes that are not a serialized value raise ValueError."""
    with pytest.raises(ValueError, match="magic"):
        deserialize(b"\x00" * 32)


def test_unpicklable_value_raises():
    """serialize of an unpicklable value raises (it is the caller's job to explain)."""
    import threading
    with pytest.raises((TypeError, pickle.PicklingError)):
        serialize({"lock": threading.Lock()})
