"""The worker's shutdown: stop requests, then the drain that waits for in-flight work and
hands back what is left (attempt refunded)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .intake import Intake
from .wakeups import Wakeups

log = logging.getLogger("pgqueue.worker")


class Shutdown:
    """The first stop request stops claiming and waits up to ``timeout`` seconds for in-flight
    work; a second one (``wakeups.force``) skips the wait."""

    def __init__(self, wakeups: Wakeups, timeout: float) -> None:
        self.stopping = False
        self._wakeups = wakeups
        self._timeout = timeout

    def request(self, fields: dict[str, Any]) -> None:
        """Stop gracefully; a second call stops at once. ``fields`` go on the log line."""
        if self.stopping:
            if not self._wakeups.force.is_set():
                log.warning("second stop request: handing back in-flight events now", extra=fields)
            self._wakeups.force.set()
        else:
            log.info(
                "stopping: no new claims; waiting up to %.0fs for in-flight handlers",
                self._timeout,
                extra=fields,
            )
            self.stopping = True
        self._wakeups.wakeup.set()
        self._wakeups.progress.set()

    async def drain(self, intake: Intake) -> None:
        """Once claiming stopped: wait for in-flight events (up to the timeout, or until a
        second request); then cancel what still runs on the intake's route and hand it back."""
        wakeups = self._wakeups
        runners, limiter, relays = intake.route.runners, intake.route.limiter, intake.route.relays
        gates = [g for g in (intake.route.orderer, intake.route.rates) if g is not None]
        while intake.suspects:  # never started: hand them back now
            intake.hand_back(intake.suspects.popleft())
        deadline = time.monotonic() + self._timeout
        while intake.inflight and not wakeups.force.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await wakeups.progress_or(wakeups.force.wait(), remaining)
        if not intake.inflight:
            return
        # Hand back whatever is still running or queued: cancel the runners (each records its
        # unit as interrupted), mark queued units interrupted, and write it all once.
        if limiter is not None:  # units still waiting for a slot go back too
            for delivery, handler, prior, _ in await limiter.stop():
                intake.interrupted(delivery, handler, prior)
        for gate in gates:  # units waiting for their key's turn or a token go back too
            for delivery, handler, prior, _ in await gate.stop():
                intake.interrupted(delivery, handler, prior)
        if relays is not None:  # relay units queued or publishing go back too
            await relays.cancel()
        await runners.cancel()
        while runners.units:
            delivery, handler, prior, _ = runners.units.popleft()
            intake.interrupted(delivery, handler, prior)
        intake.hand_back_unrecorded()
        # The completer writes them; give it a few seconds before leaving it to the leases.
        deadline = time.monotonic() + 5.0
        while intake.inflight and time.monotonic() < deadline:
            await wakeups.progress_or(asyncio.sleep(3600), deadline - time.monotonic())
        if intake.inflight:
            log.warning(
                "could not hand back %d event(s); their leases will expire", len(intake.inflight)
            )
