"""The supervisor's commands: the operator's (``AdminRequest``, ``ShutdownRequested``) and the
peer's (``PeerCommand``), including how a command meets a planned handover in progress
(docs/failover-rules.md, "Commands during a planned handover").

A mixin of :class:`failover.core.supervisor.Supervisor`, kept apart so each file reads as one
subject; it uses the supervisor's state and helpers and has none of its own.  Pure.
"""
from __future__ import annotations

from failover.core import events as ev
from failover.core.state import ACTIVE_STATES, Mode, Role, State


class Commands:
    """Command handlers of the supervisor (see the module docstring)."""

    def _on_PeerCommand(self, e: ev.PeerCommand, now: float, acts: list) -> None:
        if e.kind in ("step_down", "yield"):
            if e.term <= self.term:
                acts.append(ev.Log("warning", "stale_command",
                                   f"{e.kind} in term {e.term} refused: this node is in term {self.term}"))
                return
            self.highest_seen = max(self.highest_seen, e.term)
            self._peer_said(now, State.ACTIVATING, e.term)
            if e.kind == "yield":
                self.hold = True
            if self.state in ACTIVE_STATES:
                self._go_inactive(now, acts, f"peer took over in term {e.term}: {e.reason}", drain=True)
                self._quiet_until = now + self.cfg.handover_timeout
        elif e.kind == "take_over":
            if self._stale_peer_command(e, acts):
                return
            # from an active peer: it hands over; from an inactive one: "you be active"
            known = self.peer.state if self.peer else State.INACTIVE
            self._peer_said(now, State.DRAINING if known in ACTIVE_STATES else known, e.term)
            if self.state in ACTIVE_STATES:
                h = self._handover
                if h is not None and self.shutting_down:
                    acts.append(ev.Log("warning", "handover_continues", f"peer asked {self.cfg.node} "
                                       f"to stay active ({e.reason}) but it is shutting down"))
                elif h is not None:
                    self._cancel_handover(now, acts, f"{self.cfg.peer_name} asked {self.cfg.node} "
                                          f"to stay active: {e.reason}")
                return
            if self._stay_asked_until is not None and now < self._stay_asked_until:
                # it crossed our request to stay active: the peer re-activates when it reads it
                acts.append(ev.Log("warning", "handover_refused", f"take_over from the peer "
                                   f"({e.reason}) crossed this node's request that it stay active"))
                return
            if not self.eligible(now):
                acts.append(ev.Log("error", "handover_refused",
                                   f"peer asked this node to take over ({e.reason}) but it is not eligible"))
                return
            self._activate(now, acts, f"handover from peer: {e.reason}")
            if not (self.peer and self.peer.shutting_down):
                self._skip_failback_window()  # an operator moved activity here
        elif e.kind == "hand_over":
            if self._stale_peer_command(e, acts):
                return
            self._peer_said(now, self.peer.state if self.peer else State.INACTIVE, e.term)
            if self.state not in ACTIVE_STATES or self._handover is not None:
                return  # nothing to hand over, or already handing over
            if not (self.peer and self.peer.eligible):
                acts.append(ev.Log("error", "handover_refused",
                                   f"peer asked for a handover ({e.reason}) but it is not eligible"))
                return
            self._hand_over(now, acts, e.reason, kind="peer")
        else:
            acts.append(ev.Log("error", "bad_command", f"unknown peer command {e.kind!r} ignored"))

    def _stale_peer_command(self, e: ev.PeerCommand, acts: list) -> bool:
        """A command from a term older than the peer is known in is refused and logged."""
        known = self.peer.term if self.peer else 0
        if e.term < known:
            acts.append(ev.Log("warning", "stale_command",
                               f"{e.kind} in term {e.term} refused: peer is known in term {known}"))
            return True
        return False

    def _on_AdminRequest(self, e: ev.AdminRequest, now: float, acts: list) -> None:
        """Operator commands.  A command that conflicts with a pending planned handover takes
        effect (cancels it) or is refused; the table is in docs/failover-rules.md."""
        if e.kind == "mode":
            self._admin_mode(e, now, acts)
            return
        if e.kind not in ("failover", "failback"):
            acts.append(ev.AdminReply(e.request_id, False, f"unknown request {e.kind!r}"))
            return
        target = Role.SECONDARY if e.kind == "failover" else Role.PRIMARY
        me, other = self.cfg.node, self.cfg.peer_name
        peer_ok = self.peer_fresh(now)
        self._expire_asked_handover(now)
        if target is self.cfg.role:  # make this node active
            if self.state in ACTIVE_STATES:
                h = self._handover
                if h is None:
                    acts.append(ev.AdminReply(e.request_id, True, f"{me} is already active"))
                elif self.shutting_down:
                    acts.append(ev.AdminReply(e.request_id, False, f"{me} is shutting down: its handover "
                                              f"to {other} cannot be cancelled; nothing changed"))
                else:
                    self._cancel_handover(now, acts, f"operator {e.kind}")
                    acts.append(ev.AdminReply(e.request_id, True, f"{e.kind}: cancelled the pending "
                                              f"handover to {other} ({h.cause}); {me} stays active"))
                return
            if not self.eligible(now):
                acts.append(ev.AdminReply(e.request_id, False, f"{me} is not eligible "
                                          f"(service {self.service.label}, licensed {self.licensed(now)})"))
                return
            if not peer_ok and not e.force:
                acts.append(ev.AdminReply(e.request_id, False, "peer is not reachable; a takeover now "
                                          "could leave two active nodes (use --force)"))
                return
            if (peer_ok and not e.force and self.cfg.handover_wait > 0 and self.peer is not None
                    and self.peer.state in ACTIVE_STATES):
                # planned move: the active peer hands over once replication is complete
                again = (f" (asked {now - self._asked_handover:.1f}s ago already)"
                         if self._asked_handover is not None else "")
                self.hold = False
                self._stay_asked_until = None
                self._asked_handover = now if self._asked_handover is None else self._asked_handover
                acts.append(ev.SendCommand("hand_over", self.term, f"operator {e.kind}"))
                acts.append(ev.AdminReply(e.request_id, True, f"{e.kind}: asked {other} to hand over "
                                          f"to {me} once replication is complete{again}"))
                return
            self._activate(now, acts, f"operator {e.kind}", tell_peer="yield")
            self._skip_failback_window()
            acts.append(ev.AdminReply(e.request_id, True, f"{e.kind}: {me} activating in term {self.term}"))
            return
        # make the peer active
        if self.state not in ACTIVE_STATES:
            if not (self.peer and self.peer.state in ACTIVE_STATES and peer_ok):
                acts.append(ev.AdminReply(e.request_id, False, f"{me} is not active; "
                                          f"run {e.kind} on {other}"))
            elif self.peer.shutting_down:
                acts.append(ev.AdminReply(e.request_id, False, f"{other} is shutting down and hands "
                                          f"over to {me}; it cannot stay active: nothing changed"))
            else:
                self._ask_peer_to_stay(now, acts, e)
            return
        if not (peer_ok and self.peer and self.peer.eligible):
            acts.append(ev.AdminReply(e.request_id, False, f"peer {other} is not reachable "
                                      "or not eligible; nothing changed"))
            return
        if self._handover is not None:
            acts.append(ev.AdminReply(e.request_id, True, f"{e.kind}: already handing over to "
                                      f"{other}, waiting for replication"))
            return
        self._hand_over(now, acts, f"operator {e.kind}", kind="operator")
        acts.append(ev.AdminReply(e.request_id, True, f"{e.kind}: handing over to {other}"))

    def _ask_peer_to_stay(self, now: float, acts: list, e: ev.AdminRequest) -> None:
        """On an inactive node, a command to make the (active) peer active: the peer may be
        waiting to hand over to this node (asked here, by its own operator, by the schedule),
        and this node cannot see that.  So it sends ``take_over``, which an active node reads
        as "stay active": it cancels a pending handover (docs/failover-rules.md).  A take_over
        the peer sent before it read ours crosses it: this node refuses it for a few pings and
        does not take activity meanwhile; the peer, reading ours while draining, re-activates."""
        me, other = self.cfg.node, self.cfg.peer_name
        window = 4 * self.cfg.ping_interval
        self._stay_asked_until = now + window
        self._quiet_until = max(self._quiet_until or now, now + window)
        asked, self._asked_handover = self._asked_handover, None
        acts.append(ev.SendCommand("take_over", self.term, f"operator {e.kind} on {me}: stay active"))
        acts.append(ev.Log("info", "stay_asked", f"operator {e.kind}: asked {other} to stay active"
                           + (f", cancelling the handover to {me} asked {now - asked:.1f}s ago"
                              if asked is not None else "")))
        if asked is not None:
            msg = (f"{e.kind}: asked {other} to cancel the handover to {me} requested "
                   f"{now - asked:.1f}s ago; {other} stays active")
        else:
            msg = (f"{e.kind}: {other} is active; asked it to stay active (a handover to {me} "
                   "it may be waiting for is cancelled)")
        acts.append(ev.AdminReply(e.request_id, True, msg))

    def _expire_asked_handover(self, now: float) -> float | None:
        """When this (inactive) node asked its peer to hand over, while that may still be pending."""
        if self._asked_handover is not None and (
                not self.peer_fresh(now) or self.peer is None or self.peer.state not in ACTIVE_STATES
                or now > self._asked_handover + self.cfg.handover_wait + self.cfg.handover_timeout):
            self._asked_handover = None
        return self._asked_handover

    def _admin_mode(self, e: ev.AdminRequest, now: float, acts: list) -> None:
        try:
            mode = Mode[e.arg.upper()]
        except KeyError:
            acts.append(ev.AdminReply(e.request_id, False, f"unknown mode {e.arg!r}: automatic or manual"))
            return
        self.mode = mode
        acts.append(ev.Log("warning", "mode", f"node manager mode set to {self.mode.label}"))
        note = ""
        h = self._handover
        if h is not None and mode is Mode.MANUAL and h.kind == "scheduled":
            self._cancel_handover(now, acts, "mode manual: no scheduled failback")
            note = f"; the scheduled failback to {self.cfg.peer_name} is cancelled"
        elif h is not None:
            note = (f"; the handover to {self.cfg.peer_name} already under way ({h.cause}) goes ahead"
                    " (manual mode still obeys commands)" if mode is Mode.MANUAL else "")
        elif self._expire_asked_handover(now) is not None and mode is Mode.MANUAL:
            note = (f"; the handover to {self.cfg.node} asked of {self.cfg.peer_name} goes ahead "
                    "(manual mode still obeys commands)")
        acts.append(ev.AdminReply(e.request_id, True, f"mode {self.mode.label}{note}"))
        acts.append(ev.SendStatus())

    def _on_ShutdownRequested(self, e: ev.ShutdownRequested, now: float, acts: list) -> None:
        if self.shutting_down:
            return
        acts.append(ev.Log("warning", "shutdown", f"shutdown requested ({e.signal})"))
        peer_ok = self.peer_fresh(now) and self.peer is not None and self.peer.eligible
        self.shutting_down = True
        if self._handover is not None:
            return  # already handing over: it goes on, then the drain, then the stop
        if self.state in ACTIVE_STATES and peer_ok:
            self._hand_over(now, acts, f"{self.cfg.node} shutting down", kind="shutdown")
            if self._handover is not None:
                return  # stays active until replication is complete
        elif self.state in ACTIVE_STATES:
            self._go_inactive(now, acts, "shutting down, no peer to hand over to", drain=True)
        if self.state is State.DRAINING:
            self._drain_deadline = now + self.cfg.drain_timeout
        else:
            self._stop(acts, "shutdown")
