"""The inotify wake-up of a job's supervisor when its worker writes an event."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cryptotune_daemon.jobs.event_watch import EventFileWatch
from cryptotune_daemon.layout import EVENTS_FILE


def test_a_write_to_the_event_file_wakes_only_its_job(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        loop = asyncio.get_running_loop()
        watch = EventFileWatch()
        assert watch.start(loop)
        first, second = tmp_path / "a", tmp_path / "b"
        first.mkdir()
        second.mkdir()
        woken_a, woken_b = watch.follow("a", first), watch.follow("b", second)
        assert woken_a is not None and woken_b is not None
        (first / "worker.log").write_text("not an event\n")  # other files do not wake anyone
        (first / EVENTS_FILE).write_text('{"type": "log"}\n')  # created late: still seen
        await asyncio.wait_for(woken_a.wait(), 5)
        a_set, b_set = woken_a.is_set(), woken_b.is_set()
        watch.unfollow("a")
        woken_a.clear()
        with (first / EVENTS_FILE).open("a") as handle:
            handle.write('{"type": "log"}\n')
        await asyncio.sleep(0.2)
        after_unfollow = woken_a.is_set()
        watch.close(loop)
        return a_set, b_set, after_unfollow

    assert asyncio.run(scenario()) == (True, False, False)
