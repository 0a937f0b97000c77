"""Latency-critical tenants of other processes, followed while they come and go.

A scheduler's best-effort tenants steal the TPCs of a latency-critical tenant of another
process behind that tenant's gate, learning of its requests from its `RequestSignal`
(`Tenant.follow_requests`). Processes join and leave a GPU while best-effort threads
launch (`lithos_sched.ledger`), so `RemoteTenants.follow` adds such a tenant to a running
scheduler and `RemoteTenants.unfollow` removes it.

Both replace the scheduler's tenant collections instead of changing them in place: a
thread iterating them meanwhile sees the old set or the new one, whole. A best-effort
launch in progress picks the change up at its next atom. A tenant whose process is gone
may have left its gate closed for good; `unfollow` opens and forces it, so the atoms
already queued behind it run, and takes its TPCs out of every later steal. The signal
stays mapped while a GPU stream may still wait on its gate: until no atom of the
scheduler is queued on stolen TPCs at a later follow or unfollow, or the scheduler closes
(a process following tenants that come and go keeps no mapping of each one for good).
`RemoteTenants` is a part of `Scheduler`, in a file of its own.
"""

from __future__ import annotations

from typing import Any

from lithos_sched.gates import OPEN
from lithos_sched.tenant import Priority, TenantConfigError, TenantSpec
from lithos_sched.tenant_runtime import Tenant


class RemoteTenants:
    """`Scheduler`'s followed tenants of other processes (a mixin of `Scheduler`)."""

    def follow(self, spec: TenantSpec, signal: Any) -> Tenant:
        """Follow a latency-critical tenant of another process from now on.

        Its TPCs are stolen by this scheduler's best-effort tenants while it has no
        request open, behind its gate (`Tenant.follow_requests`). The scheduler takes
        ``signal`` over: it closes it when it closes.

        Parameters
        ----------
        spec : TenantSpec
            The tenant: latency-critical, with its TPC ids (``tpcs=``), none of them a
            TPC of a tenant of this scheduler.
        signal : RequestSignal
            The tenant's, attached in this process.

        Returns
        -------
        Tenant

        Raises
        ------
        TypeError
            For a best-effort tenant.
        TenantConfigError
            For a spec without TPC ids, a name this scheduler has, or TPCs it uses.
        SchedulerClosedError
            Once the scheduler is closing.
        """
        if spec.priority is not Priority.LATENCY_CRITICAL:
            raise TypeError(f"follow is for latency-critical tenants; {spec.name!r} is {spec.priority.value}")
        if spec.tpcs is None:
            raise TenantConfigError(f"tenant {spec.name!r}: a followed tenant needs its TPC ids (tpcs=)")
        self._check_open()
        tpcs = frozenset(spec.tpcs)
        with self._membership_lock:
            if spec.name in self.tenants:
                raise TenantConfigError(f"tenant {spec.name!r} is a tenant of this scheduler already")
            clash = sorted(t.name for t in self.tenants.values() if t.tpcs & tpcs)
            if clash:
                raise TenantConfigError(f"tenant {spec.name!r}: its TPCs overlap those of {clash}")
            self._close_unfollowed()
            tenant = Tenant(self, spec, tpcs)
            tenant.follow_requests(signal)
            self._followed_signals = {**self._followed_signals, spec.name: signal}
            self.tenants = {**self.tenants, spec.name: tenant}
            self._lc = [*self._lc, tenant]
            self._membership_changed()
        return tenant

    def unfollow(self, name: str, *, release_gate: bool = True) -> None:
        """Stop following tenant ``name`` (added by `follow`): no later atom steals its
        TPCs.

        Parameters
        ----------
        name : str
        release_gate : bool
            Open and force its gate for good, so the atoms queued behind it run: right
            once its process is gone or has left the ledger (nothing would open it, and
            no one waits on it any more), the default. False leaves the gate as it is.

        Raises
        ------
        KeyError
            If this scheduler does not follow ``name``.
        """
        with self._membership_lock:
            signal = self._followed_signals.get(name)
            if signal is None:
                raise KeyError(f"this scheduler follows no tenant {name!r}; it follows {self.followed()}")
            tenant = self.tenants[name]
            self._followed_signals = {k: v for k, v in self._followed_signals.items() if k != name}
            self._unfollowed_signals.append(signal)
            self.tenants = {k: v for k, v in self.tenants.items() if k != name}
            self._lc = [t for t in self._lc if t is not tenant]
            self._membership_changed()
            if release_gate and tenant.gate is not None:
                # host stores, from whichever thread calls: the same as the timeline's on the GPU,
                # and the simulated device, which one thread drives, sees them at its next step
                tenant.gate.store(OPEN)
                tenant.gate.force(True)
            self._close_unfollowed()
        tenant.home.close()  # nothing of it ran here: its streams are empty

    def followed(self) -> list[str]:
        """The names of the tenants this scheduler follows (`follow`), sorted."""
        return sorted(self._followed_signals)

    def _membership_changed(self) -> None:
        """Count a change of the latency-critical tenants; forget what depended on them."""
        self._lc_shared = {}
        self._membership += 1

    def _close_unfollowed(self) -> None:
        """Close the signals of the tenants unfollowed before, once no atom of this
        scheduler is in flight on stolen TPCs: no stream waits on their gates any more.
        Called with the membership lock held."""
        if not self._unfollowed_signals:
            return
        if any(r.stolen for t in self.tenants.values() for r in tuple(t._inflight)):
            return
        for signal in self._unfollowed_signals:
            signal.close()
        self._unfollowed_signals = []

    def _close_followed(self) -> None:
        """Close the signals of every tenant followed now or before (the scheduler closes)."""
        for signal in [*self._followed_signals.values(), *self._unfollowed_signals]:
            signal.close()
        self._unfollowed_signals.clear()
