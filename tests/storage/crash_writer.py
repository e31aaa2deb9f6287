"""Child process of the crash test: writes forever with durability="sync" and reports each write.

Protocol on stdout, one line each, flushed: ``ready``, then for every operation ``begin <op> <id> <value>``
before it and ``ack`` once it returned. The parent kills this process with SIGKILL at a random moment.
Edge operations name the edge ``src>dst``: ``link`` (weight ``value``), ``weigh`` (delta ``value``); ``scale``
multiplies every weight by 2 (``value`` 2) or 0.5 (``value`` -2). ``kappa`` sets an item's κ to ``value`` / 100
(UPDATE_KAPPA); ``consolidate`` is a full compaction whose policy moves every live item's κ up by 0.125;
``erase`` erases an item and every edge to or from it.
"""

from __future__ import annotations

import random
import sys

import numpy as np

from t4dm.storage import T4DX, Edge, Item, MergedRows


def _nrem(rows: MergedRows) -> None:
    live = rows.is_current & rows.is_item
    rows.kappa[live] = np.minimum(1.0, rows.kappa[live] + 0.125)


def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    out = sys.stdout
    with T4DX.open(path, dim=4, durability="sync", memtable_bytes=16 << 10, max_segments=3) as db:
        live = sorted(item.id for item in db.scan())
        edges = sorted(f"{e.src}>{e.dst}" for e in db.edges(live)) if live else []
        counter = len(live) + 10_000 * seed
        out.write("ready\n")
        out.flush()
        while True:
            roll = rng.random()
            counter += 1
            if roll < 0.45 or len(live) < 2:
                op, id = "insert", f"k{counter}"
                out.write(f"begin {op} {id} {counter}\n")
                out.flush()
                db.insert(
                    Item(vector=np.full(4, counter % 97, dtype=np.float32), id=id, fields={"v": counter})
                )
                live.append(id)
            elif roll < 0.62:
                op, id = "update", rng.choice(live)
                out.write(f"begin {op} {id} {counter}\n")
                out.flush()
                db.update_fields(id, {"v": counter})
            elif roll < 0.655:
                op, id = "delete", live.pop(rng.randrange(len(live)))
                out.write(f"begin {op} {id} 0\n")
                out.flush()
                db.delete(id)
            elif roll < 0.68:  # ERASE with its edges: one transaction, all of it or none after a crash
                op, id = "erase", live.pop(rng.randrange(len(live)))
                out.write(f"begin {op} {id} 0\n")
                out.flush()
                db.erase(id)
                edges = [e for e in edges if id not in e.split(">")]
            elif roll < 0.76:
                src, dst = rng.sample(live, 2)
                out.write(f"begin link {src}>{dst} {counter % 7 + 1}\n")
                out.flush()
                db.add_edges(Edge(src, dst, weight=float(counter % 7 + 1)))
                if f"{src}>{dst}" not in edges:
                    edges.append(f"{src}>{dst}")
            elif roll < 0.83 and edges:
                src, dst = rng.choice(edges).split(">")
                out.write(f"begin weigh {src}>{dst} 1\n")
                out.flush()
                db.update_edge_weight(src, dst, delta=1.0)
            elif roll < 0.88:
                up = rng.random() < 0.5
                out.write(f"begin scale - {2 if up else -2}\n")
                out.flush()
                db.batch_scale_weights(2.0 if up else 0.5)
            elif roll < 0.94:
                id, value = rng.choice(live), counter % 101
                out.write(f"begin kappa {id} {value}\n")
                out.flush()
                db.update_kappa(id, kappa=value / 100)
            elif roll < 0.97:
                out.write("begin consolidate - 0\n")
                out.flush()
                db.compact(policy=_nrem)
            else:
                out.write("begin compact - 0\n")
                out.flush()
                db.compact()
            out.write("ack\n")
            out.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
