"""`pyactor memory`: join every node's and process's answer into one account of the objects.

Input: the node snapshots of state_service.py with the sections "objects" (each process's
reference table, process_state.py), "store_objects" (each store's objects and the pids pinning
them) and "process_memory" (/proc figures). Output: a MemorySummary (pyactor/util/state.py):

    object  <- its owner's entry (state, inline size, the node storing it, borrowers, the
               pending tasks and lineage holding refs, the refs inside other objects)
            <- borrowers' entries (their own refs to it)
            <- every store holding a copy (size, zero-copy views pinning it, by pid)
    process <- what it owns + its USS/PSS, with the store pages it maps shown apart
    node    <- its store's figures + the sum over its processes
"""

from __future__ import annotations

from pyactor.util.state import (Holder, MemorySummary, NodeMemory, ObjectState,
                                ProcessMemory)


def build_summary(snapshots: list[dict]) -> MemorySummary:
    processes: dict[int, dict] = {}  # pid -> process answer (with node_id)
    by_address: dict[tuple, int] = {}  # runtime address -> pid
    owners: dict[str, tuple[dict, dict]] = {}  # object id -> (process, entry row)
    borrowed: dict[str, list[tuple[dict, dict]]] = {}
    stores: dict[str, dict[str, dict]] = {}  # object id -> node id -> store row
    spilled: dict[str, tuple[str, int]] = {}  # object id -> (node id, size) of spilled ones
    memory: dict[int, dict] = {}
    labels: dict[int, str] = {}
    for snapshot in snapshots:
        node_id = snapshot.get("node_id", "")
        for pid, used in (snapshot.get("process_memory") or {}).items():
            memory[int(pid)] = used
        for worker in snapshot.get("workers", ()):
            if worker["actor_id"]:
                labels[worker["pid"]] = f"actor {worker['actor_id'][:12]}"
        for row in snapshot.get("store_objects", ()):
            stores.setdefault(row["object_id"], {})[node_id] = row
        for object_id, size in (snapshot.get("spilled_objects") or {}).items():
            spilled[object_id] = (node_id, size)
        for process in snapshot.get("processes", ()):
            if "error" in process:
                continue
            processes[process["pid"]] = process
            if process.get("address"):
                by_address[tuple(process["address"])] = process["pid"]
            if process.get("label"):
                labels.setdefault(process["pid"], process["label"])
            for row in process.get("objects", ()):
                if row["actor_handle"]:
                    continue  # an actor handle's token, not an object anyone stored
                if row["owned"]:
                    owners[row["object_id"]] = (process, row)
                else:
                    borrowed.setdefault(row["object_id"], []).append((process, row))
    objects = [_object_row(object_id, owners.get(object_id), borrowed.get(object_id, []),
                           stores.get(object_id, {}), by_address, spilled.get(object_id))
               for object_id in sorted(set(owners) | set(stores) | set(spilled))]
    process_rows = _process_rows(processes, owners, objects, memory, labels)
    return MemorySummary(objects=objects, processes=process_rows,
                         nodes=_node_rows(snapshots, process_rows))


def _object_row(object_id: str, owner, borrowers: list, copies: dict,
                by_address: dict, spilled: tuple | None = None) -> ObjectState:
    holders: list[Holder] = []
    sites: list[str] = []
    process, entry = owner if owner is not None else ({}, None)
    owner_pid = process.get("pid", 0)
    if entry is not None:
        if entry["program_refs"]:
            holders.append(Holder("LOCAL_REFERENCE", owner_pid, entry["program_refs"],
                                  _refs_detail(entry, owner_pid)))
        for task in entry["pending_task_args"]:
            holders.append(Holder("PENDING_TASK_ARGUMENT", owner_pid, task["count"],
                                  f"argument of pending task {task['name']} "
                                  f"({task['task_id'][:12]})"))
        for task in entry["lineage_of"]:
            holders.append(Holder("LINEAGE", owner_pid, task["count"],
                                  f"argument of finished task {task['name']} "
                                  f"({task['task_id'][:12]}), kept to rebuild its results"))
        if entry["task_pins"]:
            holders.append(Holder("TASK_RUNNING", owner_pid, entry["task_pins"],
                                  "the task making it has not finished"))
        for outer in entry["contained_in"]:
            holders.append(Holder("CONTAINED_IN", owner_pid, 1, f"inside object {outer}"))
        sites += [f"{site} (pid {owner_pid}) x{count}" for site, count in entry["call_sites"]]
        borrower_rows = {tuple(p["address"]): row for p, row in borrowers if p.get("address")}
        for address in entry["borrowers"]:
            pid = by_address.get(tuple(address), 0)
            row = borrower_rows.get(tuple(address))
            count = row["program_refs"] if row is not None else 0
            holders.append(Holder("BORROWER", pid, count,
                                  f"borrowed by pid {pid or '?'} at {address[0]}:{address[1]}"
                                  f" ({count} ref(s) there)"))
            if row is not None:
                sites += [f"{site} (pid {pid}) x{n}" for site, n in row["call_sites"]]
    pinned_by: dict[int, int] = {}
    for node_id, store_row in sorted(copies.items()):
        for pid, count in store_row["pins"]:
            pinned_by[pid] = pinned_by.get(pid, 0) + count
            holders.append(Holder("ZERO_COPY_VIEW", pid, count,
                                  f"{count} zero-copy view(s) in pid {pid} into node "
                                  f"{node_id[:12]}'s store (arrays read with get, or a "
                                  f"running task's arguments)"))
    if entry is not None:
        state = entry["state"]
        home = entry["node_id"]
        size = entry["inline_bytes"]
    elif spilled is not None and not copies:
        home, state, size = spilled[0], "SPILLED", 0
    else:
        # No owner knows it: the store's state says why it is still there (DELETED: freed
        # by its owner, kept by views; SEALED: its owner is gone or did not answer).
        home = next(iter(sorted(copies)), "")
        state, size = copies[home]["state"], 0
    if home and home in copies:
        size = copies[home]["size"]
    elif copies and not size:
        size = next(iter(copies.values()))["size"]
    if spilled is not None and home == spilled[0] and home not in copies:
        location = "SPILLED"  # on its node's disk; read back when someone gets it
        size = size or spilled[1]
    elif state == "PENDING":
        location = "PENDING"
    elif home or copies:
        location = "STORE"
    elif state == "FAILED":
        location = "ERROR"
    else:
        location = "INLINE"
    return ObjectState(
        object_id=object_id, state=state, size_bytes=size, location=location,
        node_id=home, copies_on=[n for n in sorted(copies) if n != home],
        owner_pid=owner_pid, owner_address=process.get("address") or [],
        task_id=entry["task_id"] if entry is not None else "", holders=holders,
        pinned_by=pinned_by, call_sites=sites)


def _refs_detail(entry: dict, pid: int) -> str:
    where = ", ".join(f"{site} x{count}" for site, count in entry["call_sites"])
    return f"{entry['program_refs']} ObjectRef(s) in pid {pid}" + (
        f" made at {where}" if where else
        " (record_ref_call_sites=True shows where they were made)")


def _process_rows(processes: dict, owners: dict, objects: list, memory: dict,
                  labels: dict) -> list[ProcessMemory]:
    owned: dict[int, list] = {}
    for object_id, (process, entry) in owners.items():
        owned.setdefault(process["pid"], []).append(entry)
    store_bytes: dict[int, int] = {}
    for obj in objects:
        if obj.location == "STORE" and obj.owner_pid:
            store_bytes[obj.owner_pid] = store_bytes.get(obj.owner_pid, 0) + obj.size_bytes
    rows = []
    for pid, process in sorted(processes.items()):
        entries = owned.get(pid, [])
        refs = sum(row["local_refs"] for row in process.get("objects", ()))
        used = memory.get(pid, {})
        rows.append(ProcessMemory(
            pid=pid, kind=process["kind"], node_id=process["node_id"],
            label=labels.get(pid, ""), owned_objects=len(entries),
            owned_inline_bytes=sum(e["inline_bytes"] for e in entries),
            owned_store_bytes=store_bytes.get(pid, 0), refs_held=refs,
            uss_bytes=used.get("uss", 0), pss_bytes=used.get("pss", 0),
            rss_bytes=used.get("rss", 0), store_rss_bytes=used.get("store_rss", 0),
            store_pss_bytes=used.get("store_pss", 0)))
    return rows


def _node_rows(snapshots: list[dict], processes: list) -> list[NodeMemory]:
    rows = []
    for snapshot in snapshots:
        if "error" in snapshot:
            continue
        node_id = snapshot["node_id"]
        store = snapshot.get("store") or {}
        mine = [row for row in processes if row.node_id == node_id]
        rows.append(NodeMemory(
            node_id=node_id, store_used_bytes=store.get("used_bytes", 0),
            store_capacity_bytes=store.get("capacity_bytes", 0),
            store_objects=store.get("object_count", 0),
            pinned_objects=store.get("pinned_count", 0), processes=len(mine),
            uss_bytes=sum(row.uss_bytes for row in mine),
            pss_bytes=sum(row.pss_bytes for row in mine)))
    return rows


# ---------------------------------------------------------------------- the report
def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 1024:,.1f} KiB" if n >= 1024 \
        else f"{n} B"


def format_summary(summary: MemorySummary) -> str:
    lines = ["=== nodes ==="]
    for node in summary.nodes:
        lines.append(f"node {node.node_id[:12]}: store {_mib(node.store_used_bytes)} used of "
                     f"{_mib(node.store_capacity_bytes)}, {node.store_objects} object(s), "
                     f"{node.pinned_objects} pinned; {node.processes} process(es): USS "
                     f"{_mib(node.uss_bytes)}, PSS {_mib(node.pss_bytes)} (store pages "
                     f"counted once)")
    lines.append("")
    lines.append("=== processes ===")
    lines.append(f"{'pid':>7} {'kind':<7} {'node':<12} {'owns':>5} {'inline':>11} "
                 f"{'in store':>11} {'refs':>5} {'USS':>11} {'PSS':>11} {'store RSS':>11} "
                 f"{'store PSS':>11}  label")
    for p in summary.processes:
        lines.append(f"{p.pid:>7} {p.kind:<7} {p.node_id[:12]:<12} {p.owned_objects:>5} "
                     f"{_mib(p.owned_inline_bytes):>11} {_mib(p.owned_store_bytes):>11} "
                     f"{p.refs_held:>5} {_mib(p.uss_bytes):>11} {_mib(p.pss_bytes):>11} "
                     f"{_mib(p.store_rss_bytes):>11} {_mib(p.store_pss_bytes):>11}  {p.label}")
    lines.append("")
    lines.append("=== objects ===")
    for obj in summary.objects:
        where = obj.location + (f" on node {obj.node_id[:12]}" if obj.node_id else "")
        if obj.copies_on:
            where += f" (copies on {', '.join(n[:12] for n in obj.copies_on)})"
        lines.append(f"{obj.object_id}  {_mib(obj.size_bytes):>11}  {obj.state:<8} {where}"
                     f"  owner pid {obj.owner_pid or '?'}")
        for holder in obj.holders:
            lines.append(f"    {holder.kind:<22} {holder.detail}")
        if not obj.holders:
            lines.append("    (nothing holds it: it is being freed)")
    return "\n".join(lines)
