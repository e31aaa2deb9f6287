"""Child process of the crash test: writes forever with durability="sync" and reports each write.

Protocol on stdout, one line each, flushed: ``ready``, then for every operation ``begin <op> <id> <value>``
before it and ``ack`` once it returned. The parent kills this process with SIGKILL at a random moment.
"""

from __future__ import annotations

import random
import sys

import numpy as np

from t4dm.storage import T4DX, Item


def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    out = sys.stdout
    with T4DX.open(path, dim=4, durability="sync", memtable_bytes=16 << 10, max_segments=3) as db:
        live = sorted(item.id for item in db.scan())
        counter = len(live) + 10_000 * seed
        out.write("ready\n")
        out.flush()
        while True:
            roll = rng.random()
            counter += 1
            if roll < 0.55 or not live:
                op, id = "insert", f"k{counter}"
                out.write(f"begin {op} {id} {counter}\n")
                out.flush()
                db.insert(
                    Item(vector=np.full(4, counter % 97, dtype=np.float32), id=id, fields={"v": counter})
                )
                live.append(id)
            elif roll < 0.8:
                op, id = "update", rng.choice(live)
                out.write(f"begin {op} {id} {counter}\n")
                out.flush()
                db.update_fields(id, {"v": counter})
            elif roll < 0.95:
                op, id = "delete", live.pop(rng.randrange(len(live)))
                out.write(f"begin {op} {id} 0\n")
                out.flush()
                db.delete(id)
            else:
                out.write("begin compact - 0\n")
                out.flush()
                db.compact()
            out.write("ack\n")
            out.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
