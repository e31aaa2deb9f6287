"""``t4dm demo``: the main job. An assistant's memory of six weeks of conversations with Maya.

It ingests a conversation we wrote (six sessions over six weeks; Maya moves from Lisbon to Porto in week
four), with the store's clock following the sessions so that transaction time is conversation time. It
then searches, consolidates (NREM replay, REM prototypes, PRUNE), searches again, asks what the
assistant knew on a past date, and writes a κ histogram and a timeline (PNG). Everything goes through
the memory SDK (:class:`t4dm.Memory`) and its T4DX store.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from t4dm.memory import Memory, MemoryHit
from t4dm.memory.consolidation import BANDS, band_of
from t4dm.storage import UTC

START = datetime(2026, 9, 7, 18, 30, tzinfo=UTC)  # a Monday evening

# (week, turns): Maya and the assistant. The week-4 session changes where she lives.
SESSIONS: list[tuple[int, list[tuple[str, str]]]] = [
    (
        0,
        [
            ("Maya", "Hi! I just started a new job as a data engineer at a logistics company in Lisbon."),
            ("assistant", "Congratulations on the new job! How is Lisbon treating you?"),
            ("Maya", "I love living in Lisbon, my flat in Alfama has a view of the river."),
            ("assistant", "That sounds lovely. Anything you want help with this week?"),
            ("Maya", "I'm training for the Porto half marathon in November, I run three times a week."),
            ("assistant", "Great goal. I can keep track of your training plan."),
        ],
    ),
    (
        1,
        [
            ("Maya", "My cat Pixel knocked my coffee onto the laptop this morning."),
            ("assistant", "Oh no! Is the laptop all right?"),
            ("Maya", "It survived. Pixel is a grey tabby and very curious."),
            ("Maya", "Long run today: 14 kilometres along the river at an easy pace."),
            ("assistant", "Nice progress toward the half marathon."),
            ("Maya", "My sister Ines is getting married in December in Sintra."),
        ],
    ),
    (
        2,
        [
            ("Maya", "Work is busy: we migrate the warehouse pipelines to Kafka by the end of the month."),
            ("assistant", "That is a big migration. What is the hardest part?"),
            ("Maya", "Backfilling three years of shipment events without downtime."),
            ("Maya", "I ran 16 kilometres on Sunday, my knee felt a bit sore afterwards."),
            ("assistant", "Maybe rest a day and stretch before the next long run."),
            ("Maya", "Pixel now sleeps on my keyboard whenever I have a video call."),
        ],
    ),
    (
        3,
        [
            ("Maya", "Big news: I accepted a transfer to the Porto office, I move there next week."),
            ("assistant", "Exciting! Porto is also where your half marathon is."),
            ("Maya", "Yes, I will be able to train on the race course along the Douro."),
            ("Maya", "Packing is chaos, Pixel hides in every box I open."),
            ("assistant", "Good luck with the move. Do you need a checklist?"),
            ("Maya", "A checklist would help: utilities, internet, and the cat's vet records."),
        ],
    ),
    (
        4,
        [
            ("Maya", "I now live in Porto, in a small flat near the Bolhao market."),
            ("assistant", "Welcome to Porto! How is the new office?"),
            ("Maya", "The Porto office is friendly and the Kafka migration finally went live."),
            ("Maya", "Ran 18 kilometres by the Douro, my knee is fine now."),
            ("assistant", "Great, you are ready for the half marathon distance."),
            ("Maya", "Ines asked me to give a speech at her wedding in Sintra."),
        ],
    ),
    (
        5,
        [
            ("Maya", "Race week! The Porto half marathon is on Sunday."),
            ("assistant", "Remember to taper: short easy runs and plenty of sleep."),
            ("Maya", "I am writing my speech for Ines's wedding on the train."),
            ("Maya", "Pixel found the sunniest window in the new flat."),
            ("assistant", "Sounds like everyone has settled in Porto."),
            ("Maya", "My target is to finish the half marathon under one hour fifty."),
        ],
    ),
]

QUESTIONS = [
    "Where does Maya live?",
    "How is Maya's half marathon training going?",
    "What is the name of Maya's cat?",
]


def _show(say: Callable[[str], None], title: str, hits: list[MemoryHit]) -> None:
    say(f"  {title}")
    for hit in hits:
        m = hit.memory
        when = m.valid_from.strftime("%Y-%m-%d") if m.valid_from else "?"
        signals = ", ".join(f"{k} {v:.2f}" for k, v in hit.scores.items() if not k.endswith("_rank"))
        say(f"    {hit.score:5.2f}  κ {m.kappa:.2f} {m.kind:9s} {when}  {m.text[:70]}  [{signals}]")


def _plots(memory: Memory, bands_before: dict[str, int], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(memory.db.scan())
    paths = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    after = {band: 0 for band in BANDS}
    for item in items:
        after[band_of(item.kappa)] += 1
    x = range(len(BANDS))
    ax.bar([i - 0.2 for i in x], [bands_before[b] for b in BANDS], width=0.4, label="before sleep")
    ax.bar([i + 0.2 for i in x], [after[b] for b in BANDS], width=0.4, label="after sleep")
    ax.set_xticks(list(x), ["episodic\nκ < 0.4", "transitional\n0.4 ≤ κ < 0.85", "semantic\nκ ≥ 0.85"])
    ax.set_ylabel("memories")
    ax.set_title("Consolidation level κ")
    ax.legend()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "kappa_histogram.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.8))
    for kind, marker in (("episode", "o"), ("prototype", "*")):
        mine = [i for i in items if i.kind == kind]
        ax.scatter([i.valid_from for i in mine], [i.kappa for i in mine], marker=marker,
                   s=30 if kind == "episode" else 160, alpha=0.7, label=kind)  # fmt: skip
    for item in items:
        if item.kind == "prototype":
            ax.annotate(item.fields.get("text", "")[:28], (item.valid_from, item.kappa), fontsize=6,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_ylabel("κ")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Maya's memories by valid time")
    ax.legend(loc="center left")
    fig.autofmt_xdate()
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "timeline.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def run_demo(
    out_dir: str | None = None, embedder: Any = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the demonstration; figures go to ``out_dir`` (default ``./t4dm-demo``). Returns a summary."""
    started = time.perf_counter()
    out_dir = os.path.abspath(out_dir or "t4dm-demo")
    os.makedirs(out_dir, exist_ok=True)
    clock = {"now": START}
    with tempfile.TemporaryDirectory(prefix="t4dm-demo-") as root:
        say("T4DM demo: an assistant's memory of six weeks with Maya")
        memory = Memory(os.path.join(root, "memories"), embedder=embedder,
                        store_options={"clock": lambda: clock["now"]})  # fmt: skip
        with memory:
            say(f"  embedder {memory.embedder.name} ({memory.embedder.dim} dims), store {memory.path}")
            home_id = None
            for week, turns in SESSIONS:
                when = START + timedelta(weeks=week)
                clock["now"] = when
                messages = [
                    {"role": "user" if who == "Maya" else "assistant", "speaker": who, "content": text,
                     "valid_at": when + timedelta(minutes=i)}
                    for i, (who, text) in enumerate(turns)
                ]  # fmt: skip
                memory.add(messages, user_id="maya", run_id=f"week-{week}")
                if week == 0:  # the assistant keeps one profile fact about where she lives
                    [fact] = memory.add("Maya lives in Lisbon (Alfama).", user_id="maya", kind="fact",
                                        valid_at=when, metadata={"profile": "home"})  # fmt: skip
                    home_id = fact.id
                if week == 4 and home_id is not None:  # ... and corrects it when she moves
                    memory.update(home_id, text="Maya lives in Porto (near the Bolhao market).",
                                  valid_at=when - timedelta(days=3))  # fmt: skip
            clock["now"] = START + timedelta(weeks=6)
            say(f"  ingested {sum(len(t) for _, t in SESSIONS)} turns from {len(SESSIONS)} sessions "
                f"({START:%d %b} – {START + timedelta(weeks=5):%d %b %Y}): {len(memory)} memories")  # fmt: skip

            say("\nSearches before sleep:")
            for question in QUESTIONS:
                _show(say, question, memory.search(question, user_id="maya", k=3))

            say("\nWhat did the assistant know on 25 September about where Maya lives?")
            sept = datetime(2026, 9, 25, 12, tzinfo=UTC)
            then = memory.get(home_id, as_of=sept) if home_id else None
            now = memory.get(home_id) if home_id else None
            say(f"  as of {sept:%d %b}: {then.text if then else 'nothing'}")
            say(f"  now:          {now.text if now else 'nothing'}  (valid from {now.valid_from:%d %b})"
                if now else "  now: nothing")  # fmt: skip
            history = memory.history(home_id) if home_id else []
            for version in history:
                closed = f"superseded {version.superseded_at:%d %b}" if version.superseded_at else "current"
                say(f"    version recorded {version.recorded_at:%d %b}: {version.text}  ({closed})")
            _show(say, "search as of 25 September: where does Maya live?",
                  memory.search("Where does Maya live?", user_id="maya", k=2, as_of=sept))  # fmt: skip

            say("\nSleep: NREM replay, REM prototypes, PRUNE (one compaction)")
            report = memory.consolidate(progress=False, now=clock["now"])
            say(f"  {report.summary()}")
            for id in report.prototype_ids:
                proto = memory.get(id)
                sources = memory.db.derived_from(id)
                if proto is not None:
                    say(f"  prototype κ {proto.kappa:.2f} from {len(sources)} episodes: {proto.text[:80]}")

            say("\nSearches after sleep:")
            for question in QUESTIONS:
                _show(say, question, memory.search(question, user_id="maya", k=3))
            _show(say, "consolidated knowledge only: Maya's running",
                  memory.search("Maya running training", user_id="maya", k=2, policy="consolidated"))  # fmt: skip

            paths = _plots(memory, report.bands_before, out_dir)
            seconds = time.perf_counter() - started
            say(f"\nFigures: {paths[0]}\n         {paths[1]}")
            say(f"Done in {seconds:.1f} s.")
            return {
                "memories": len(memory),
                "prototypes": report.prototypes,
                "as_of_text": then.text if then else None,
                "now_text": now.text if now else None,
                "figures": paths,
                "seconds": seconds,
            }
