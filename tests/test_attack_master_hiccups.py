"""A master that hiccups on single calls of a tick: what a customer was told
is never taken away or replaced by something worse for it."""

from __future__ import annotations

import pytest

from cdnreq.model import InstanceAnswer, Phase
from tests.test_read_back import ANSWER, Master, live, run


class EmptyReadBack(Master):
    """The technical entry reads back without its answer (an empty or a
    missing `connection_parameters`: both read as {})."""

    async def get_instance(self, guid):
        if guid.startswith("tech-"):
            self.calls.append(("get", guid))
            return InstanceAnswer(guid=guid, connection_parameters={}, state="started")
        return await super().get_instance(guid)


@pytest.mark.parametrize("reason", ["periodic read-back", "waiting for the technical CDN's answer"])
async def test_a_read_back_without_an_answer_keeps_the_live_answer(reason):
    action, shown = live(reason=reason)
    master = EmptyReadBack(dict(shown))
    outcome = await run(action, master)
    assert ("publish", "A") not in master.calls, master.held
    assert master.held == shown
    assert outcome.ok and outcome.record.phase is Phase.LIVE
    assert dict(outcome.record.connection) == ANSWER
