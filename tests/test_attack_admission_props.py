"""Properties of admit() under hostile listings (random, seeded): chains of
at-once ticks stay bounded, a known or asleep instance never waits, nothing
taken is left waiting, and among those still listed the first seen go first
(whatever the limit a reload sets)."""

from __future__ import annotations

import random

from cdnreq.decide.admission import Queue, admit
from cdnreq.model import Listing, SharedInstance


def test_random_hostile_listings() -> None:
    rng = random.Random(7)
    for run in range(300):
        known: set[str] = set()
        queue = Queue()
        pool = [f"G{k:03d}" for k in range(60)]
        chain = 0
        limit = rng.randint(1, 8)
        for tick in range(1, 80):
            if rng.random() < 0.1:
                limit = rng.choice([0, 1, 2, 5, 13])  # SIGHUP
            listed = rng.sample(pool, rng.randint(0, len(pool)))
            destroyed = {g for g in listed if rng.random() < 0.1}
            listing = Listing(tuple(SharedInstance.of(g, {}, state="destroyed" if g in destroyed else "started")
                                    for g in listed))
            asleep = {g for g in known if rng.random() < 0.3}
            awake = known - asleep
            got = admit(listing, awake, asleep, queue, float(tick), limit)
            left = set(got.queue.left)
            planned = {i.guid for i in got.listing.instances}
            assert known & set(listed) <= planned  # known (awake or asleep) never wait
            assert not (left & planned)
            assert not (left & destroyed)
            new_taken = [g for g in planned if g not in known and g not in destroyed]
            if limit:
                assert len(new_taken) <= limit
            # first seen first: nothing taken was first seen after one left waiting
            for g in new_taken:
                assert all(got.queue.listed_at[g] <= got.queue.listed_at[w] for w in left)
            chain = chain + 1 if got.again else 0
            assert chain <= len(pool) + 1
            queue = got.queue
            # the taken become known (a record), sometimes forgotten again (destroyed)
            known |= set(new_taken)
            known -= {g for g in known if rng.random() < 0.02}
