"""The object store as a state machine, driven by hypothesis against a dict model.

Rules create, fill, seal, abort, get (keep a view), drop views, delete, flip evictability and
spill (what the node does: take the least recently used spill candidate, pin it, maybe see a
reader or a delete meanwhile, finish), with sizes that regularly overflow the small store and force
evictions. After every step the invariants are checked: the C heap walk (no overlapping or lost
blocks, coalesced free space), bytes in use = the sum of the live objects' blocks (plus deleted
objects still pinned), pinned and unevictable objects never evicted, evictions in LRU order, the
spill candidates exactly the sealed, unpinned, unevictable objects in LRU order, sealed contents
unchanged, freed space reused.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyactor._private.store import ObjectStore, new_segment_name
from pyactor.exceptions import ObjectStoreError, ObjectStoreFullError

CAPACITY = 256 * 1024
IDS = [bytes([i]) * 20 for i in range(12)]


@dataclass
class Obj:
    token: int          # tells apart two objects that had the same id at different times
    size: int
    alloc_bytes: int
    evictable: bool
    data: bytes = b""
    sealed: bool = False
    eligible_since: int = -1  # LRU clock when it last joined a list (evictable or spillable)
    listed: str = ""          # the list it is in: "evict", "spill" or "" (none)
    writer: memoryview | None = field(default=None, repr=False)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.store = ObjectStore.create(new_segment_name("stateful"), CAPACITY, max_objects=64)
        self.objects: dict[bytes, Obj] = {}
        self.views: list[tuple[int, memoryview, bytes]] = []  # (token, view, expected bytes)
        self.deleted_pinned: dict[int, int] = {}              # token -> alloc bytes
        self.tokens = itertools.count()
        self.clock = itertools.count()
        self.evictions = 0

    def teardown(self):
        self.views.clear()
        for obj in self.objects.values():
            obj.writer = None
        try:
            for object_id, obj in list(self.objects.items()):
                if obj.sealed:
                    self.store.delete(object_id)
                else:
                    self.store.abort(object_id)
            self.store.debug_check()
            stats = self.store.stats()
            assert stats.used_bytes == 0 and stats.largest_free_bytes == stats.capacity_bytes
        finally:
            self.store.destroy()

    # ---- model helpers ----

    def pinned_tokens(self) -> set[int]:
        return {token for token, _, _ in self.views}

    def is_eligible(self, obj: Obj) -> bool:
        return obj.sealed and obj.evictable and obj.token not in self.pinned_tokens()

    def is_spillable(self, obj: Obj) -> bool:
        return obj.sealed and not obj.evictable and obj.token not in self.pinned_tokens()

    def refresh_eligibility(self, obj: Obj) -> None:
        listed = "evict" if self.is_eligible(obj) else "spill" if self.is_spillable(obj) else ""
        if listed != obj.listed and listed:
            obj.eligible_since = next(self.clock)
        obj.listed = listed

    def sync_evictions(self) -> None:
        """Objects that vanished must have been evictable, and the oldest ones."""
        evicted = [oid for oid, obj in self.objects.items()
                   if obj.sealed and self.store.debug_object_info(oid) is None]
        if not evicted:
            return
        for oid in evicted:
            assert self.is_eligible(self.objects[oid]), "evicted a pinned or unevictable object"
        newest_evicted = max(self.objects[oid].eligible_since for oid in evicted)
        survivors = [obj for oid, obj in self.objects.items()
                     if oid not in evicted and self.is_eligible(obj)]
        assert all(obj.eligible_since > newest_evicted for obj in survivors), "not LRU order"
        for oid in evicted:
            del self.objects[oid]
        self.evictions += len(evicted)

    # ---- rules ----

    @rule(object_id=st.sampled_from(IDS),
          size=st.one_of(st.integers(0, 2000), st.integers(20_000, 120_000)),
          evictable=st.booleans(), fill=st.binary(min_size=1, max_size=1))
    def create(self, object_id, size, evictable, fill):
        if object_id in self.objects:
            try:
                self.store.create_object(object_id, size)
            except ObjectStoreError as error:
                assert error.code == 2  # EXISTS
            else:
                raise AssertionError("duplicate create succeeded")
            return
        try:
            view = self.store.create_object(object_id, size, evictable=evictable)
        except ObjectStoreFullError as error:
            assert error.requested_bytes == size
            self.sync_evictions()
            need, stats = self.store.alloc_bytes_for(size), self.store.stats()
            assert need > stats.largest_free_bytes
            evictable_left = sum(o.alloc_bytes for o in self.objects.values() if self.is_eligible(o))
            # either evicting could not have made room, or everything evictable went first
            assert evictable_left == 0 or need > stats.free_bytes + evictable_left
            return
        self.sync_evictions()
        assert len(view) == size and self.store.offset_of(view) % 64 == 0
        data = (fill * size)[:size]
        view[:] = data
        self.objects[object_id] = Obj(next(self.tokens), size, self.store.alloc_bytes_for(size),
                                      evictable, data, writer=view)

    @precondition(lambda self: any(not o.sealed for o in self.objects.values()))
    @rule(data=st.data())
    def seal(self, data):
        object_id = data.draw(st.sampled_from(sorted(o for o, v in self.objects.items() if not v.sealed)))
        obj = self.objects[object_id]
        self.store.seal(object_id)
        obj.sealed, obj.writer = True, None
        self.refresh_eligibility(obj)

    @precondition(lambda self: any(not o.sealed for o in self.objects.values()))
    @rule(data=st.data())
    def abort(self, data):
        object_id = data.draw(st.sampled_from(sorted(o for o, v in self.objects.items() if not v.sealed)))
        self.store.abort(object_id)
        del self.objects[object_id]

    @rule(object_id=st.sampled_from(IDS))
    def get(self, object_id):
        obj = self.objects.get(object_id)
        if obj is None:
            assert self.store.get(object_id) is None
            return
        if not obj.sealed:
            try:
                self.store.get(object_id)
            except ObjectStoreError as error:
                assert error.code == 3  # NOT_SEALED
            else:
                raise AssertionError("read an unsealed object")
            return
        view = self.store.get(object_id)
        assert view.readonly and bytes(view) == obj.data
        self.views.append((obj.token, view, obj.data))
        self.refresh_eligibility(obj)

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def drop_view(self, data):
        index = data.draw(st.integers(0, len(self.views) - 1))
        token = self.views[index][0]
        del self.views[index]
        if token not in self.pinned_tokens():
            self.deleted_pinned.pop(token, None)
        for obj in self.objects.values():
            self.refresh_eligibility(obj)

    @rule(object_id=st.sampled_from(IDS))
    def delete(self, object_id):
        obj = self.objects.get(object_id)
        if obj is None:
            assert self.store.delete(object_id) is False
            return
        if not obj.sealed:
            try:
                self.store.delete(object_id)
            except ObjectStoreError as error:
                assert error.code == 3
            else:
                raise AssertionError("deleted an unsealed object")
            return
        assert self.store.delete(object_id) is True
        if obj.token in self.pinned_tokens():
            self.deleted_pinned[obj.token] = obj.alloc_bytes
        del self.objects[object_id]

    @precondition(lambda self: self.objects)
    @rule(data=st.data(), evictable=st.booleans())
    def set_evictable(self, data, evictable):
        object_id = data.draw(st.sampled_from(sorted(self.objects)))
        obj = self.objects[object_id]
        self.store.set_evictable(object_id, evictable)
        obj.evictable = evictable
        self.refresh_eligibility(obj)

    @rule(meanwhile=st.sampled_from(["nothing", "reader", "delete"]))
    def spill(self, meanwhile):
        """The node's spill of the least recently used candidate: freed from the store unless a
        reader pinned it meanwhile (kept) or its owner deleted it (gone)."""
        candidates = self.store.spill_candidates(1)
        if not candidates:
            assert not any(self.is_spillable(o) for o in self.objects.values())
            return
        object_id = candidates[0]
        obj = self.objects[object_id]
        view, handle = self.store.pin_for_spill(object_id)
        assert bytes(view) == obj.data and object_id not in self.store.spill_candidates(1 << 30)
        view.release()
        if meanwhile == "reader":
            reader = self.store.get(object_id)
            assert self.store.spill_done(handle) == "busy"
            self.views.append((obj.token, reader, obj.data))
            self.refresh_eligibility(obj)
        elif meanwhile == "delete":
            assert self.store.delete(object_id) is True
            assert self.store.spill_done(handle) == "gone"
            del self.objects[object_id]
        else:
            assert self.store.spill_done(handle) == "freed"
            assert self.store.debug_object_info(object_id) is None
            del self.objects[object_id]

    # ---- invariants ----

    @invariant()
    def heap_and_tables_are_valid(self):
        self.store.debug_check()

    @invariant()
    def accounting_matches_the_model(self):
        stats = self.store.stats()
        expected = sum(o.alloc_bytes for o in self.objects.values()) + sum(self.deleted_pinned.values())
        assert stats.used_bytes == expected
        assert stats.free_bytes == CAPACITY - expected
        assert stats.object_count == len(self.objects)
        assert stats.pinned_count == len(self.pinned_tokens())
        assert stats.evictions == self.evictions

    @invariant()
    def sealed_contents_unchanged(self):
        for _, view, expected in self.views:
            assert bytes(view) == expected
        for object_id, obj in self.objects.items():
            assert self.store.contains(object_id) == obj.sealed

    @invariant()
    def spill_candidates_are_the_unpinned_primaries_least_recent_first(self):
        expected = sorted((o.eligible_since, oid) for oid, o in self.objects.items()
                          if self.is_spillable(o))
        assert self.store.spill_candidates(1 << 40) == [oid for _, oid in expected]
        assert self.store.stats().spillable_bytes == sum(
            self.objects[oid].alloc_bytes for _, oid in expected)
        if expected:  # a prefix just covering the bytes asked for
            first = self.objects[expected[0][1]].alloc_bytes
            assert self.store.spill_candidates(first) == [expected[0][1]]
            assert self.store.spill_candidates(first + 1) == [oid for _, oid in expected[:2]]

    @invariant()
    def empty_store_is_one_block(self):
        if not self.objects and not self.deleted_pinned:
            assert self.store.debug_heap() == [(0, CAPACITY, True)]


StoreMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestStoreMachine = StoreMachine.TestCase
