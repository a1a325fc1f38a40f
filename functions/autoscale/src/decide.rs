//! The decision: observed load in, desired replicas out. Pure (no I/O) and driven by an
//! explicit clock, so it is table-tested with `tokio::time::pause()`.
//!
//! Rules, in order:
//! - demand = `pending + in_flight`; at zero replicas, demand below the spec's
//!   `activation` threshold counts as none (so one stray message does not wake a service);
//! - the metric recommendation is `ceil(demand / target_per_replica)` clamped to
//!   `[min, max]`; an active burst raises it (never beyond `max`);
//! - up: at once, by at most `max_step` per decision;
//! - down: only to the highest recommendation seen during the stabilization window (so
//!   flapping load does not flap replicas), never below the replicas still busy with
//!   in-flight work (unless the backend says otherwise, each in-flight job is assumed to
//!   be on its own replica), and to zero only after `idle_seconds` without any demand;
//! - a burst that expires or is reset drops at once to what the metrics recommend (the
//!   burst is a floor, not a metric, so it does not linger in the window).
//!
//! A fresh decider (a new leader after a failover) starts with its window full of the
//! replicas already there, so it never scales down before it has watched a whole window.

use std::collections::VecDeque;
use std::time::Duration;

use jetrun_core::scale::ScaleSpec;
use tokio::time::Instant;

/// What one tick observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inputs {
    /// Messages waiting in the queue (not yet delivered).
    pub pending: u64,
    /// Work being done: delivered and unacknowledged messages, plus running jobs.
    pub in_flight: u64,
    /// Replicas the backend has now.
    pub current: u32,
    /// A burst floor and when it ends, on the decider's clock.
    pub burst: Option<(u32, Instant)>,
    /// Replicas busy with work, if the backend knows. Otherwise every in-flight job is
    /// assumed to be on a different replica (`min(replicas, in_flight)`), since a worker
    /// cannot hand a running job over and the backend may stop any replica.
    pub busy: Option<u32>,
}

/// Why the decision is what it is (stable snake_case names in signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Demand needs this many replicas.
    Backlog,
    /// Demand needs more than `max`; held at `max`.
    Capped,
    /// Woken from zero: demand reached the activation threshold.
    Activation,
    /// Going up, but by at most `max_step` this time.
    StepLimited,
    /// Held at least at `min`.
    Min,
    /// Held up by an active burst.
    Burst,
    /// Lower demand, but not for a whole stabilization window yet.
    Stabilizing,
    /// Lower demand, but replicas are still busy with in-flight work.
    Busy,
    /// No demand, waiting out the idle time before going to zero.
    IdleWait,
    /// Idle for the idle time: scaled to zero.
    Idle,
    /// Nothing to change.
    Steady,
}

impl Reason {
    /// The stable name used in signals and state.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Backlog => "backlog",
            Reason::Capped => "capped_at_max",
            Reason::Activation => "activation",
            Reason::StepLimited => "step_limited",
            Reason::Min => "min",
            Reason::Burst => "burst",
            Reason::Stabilizing => "stabilizing",
            Reason::Busy => "busy",
            Reason::IdleWait => "idle_wait",
            Reason::Idle => "idle",
            Reason::Steady => "steady",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Replicas wanted.
    pub desired: u32,
    /// The previous decision (or the replicas found, on the first one).
    pub previous: u32,
    /// Why.
    pub reason: Reason,
    /// The numbers behind it, for people.
    pub detail: String,
}

impl Decision {
    /// Whether the desired number changed.
    pub fn changed(&self) -> bool {
        self.desired != self.previous
    }
    /// `reason: detail`, as put in signals.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.reason, self.detail)
    }
}

/// The decision state of one service.
#[derive(Debug, Clone, Default)]
pub struct Decider {
    desired: Option<u32>,
    /// Metric recommendations of the last stabilization window, oldest first.
    window: VecDeque<(Instant, u32)>,
    last_demand: Option<Instant>,
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b.max(1))
}

fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl Decider {
    /// A decider with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last decision, if any.
    pub fn desired(&self) -> Option<u32> {
        self.desired
    }

    /// Decides at `now`. Idempotent for the same inputs and clock: calling it again
    /// changes nothing but the window's clock.
    pub fn decide(&mut self, spec: &ScaleSpec, inputs: &Inputs, now: Instant) -> Decision {
        let window = Duration::from_secs(spec.stabilization_seconds);
        let idle = Duration::from_secs(spec.idle_seconds);
        let prev = match self.desired {
            Some(d) => d,
            None => {
                // First decision: what is there now is the baseline of the window, and
                // "now" is the start of any idle time.
                self.window.push_back((now, inputs.current));
                self.last_demand = Some(now);
                inputs.current
            }
        };
        let target = u64::from(spec.target_per_replica.max(1));
        let demand = inputs.pending.saturating_add(inputs.in_flight);
        if demand > 0 {
            self.last_demand = Some(now);
        }
        let effective = if prev == 0 && demand < spec.activation {
            0
        } else {
            demand
        };
        let raw = to_u32(ceil_div(effective, target));
        let rec = raw.clamp(spec.min, spec.max);
        self.window.push_back((now, rec));
        while let Some(&(t, _)) = self.window.front() {
            if now.saturating_duration_since(t) > window && self.window.len() > 1 {
                self.window.pop_front();
            } else {
                break;
            }
        }
        let burst = inputs
            .burst
            .filter(|&(_, until)| now < until)
            .map(|(n, _)| n.min(spec.max))
            .unwrap_or(0);
        let want = rec.max(burst);
        let detail_base = format!(
            "pending {} + in flight {} at {} per replica needs {raw}; bounds [{}, {}]{}",
            inputs.pending,
            inputs.in_flight,
            spec.target_per_replica,
            spec.min,
            spec.max,
            if burst > 0 {
                format!("; burst floor {burst}")
            } else {
                String::new()
            },
        );

        let (desired, reason) = if want > prev {
            let stepped = want.min(prev.saturating_add(spec.max_step.max(1)));
            let reason = if stepped < want {
                Reason::StepLimited
            } else if burst > rec {
                Reason::Burst
            } else if raw > spec.max {
                Reason::Capped
            } else if prev == 0 && raw > 0 {
                Reason::Activation
            } else if raw < spec.min {
                Reason::Min
            } else {
                Reason::Backlog
            };
            (stepped, reason)
        } else if want == prev {
            let reason = if burst > 0 && burst >= rec {
                Reason::Burst
            } else if raw > spec.max {
                Reason::Capped
            } else if raw < spec.min && prev == spec.min {
                Reason::Min
            } else {
                Reason::Steady
            };
            (prev, reason)
        } else {
            // Lower demand: the highest recommendation of the window, the burst floor
            // and the busy replicas all hold it up.
            let stable = self
                .window
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(rec)
                .min(spec.max);
            let busy = inputs.busy.unwrap_or_else(|| to_u32(inputs.in_flight)).min(prev);
            let mut down = stable.max(burst).max(busy);
            let mut reason = if down == want {
                if burst > 0 && burst >= rec {
                    Reason::Burst
                } else if want == spec.min && raw < spec.min && want > 0 {
                    Reason::Min
                } else {
                    Reason::Backlog
                }
            } else if busy > stable.max(burst) {
                Reason::Busy
            } else {
                Reason::Stabilizing
            };
            if down == 0 {
                let idle_for = self
                    .last_demand
                    .map(|t| now.saturating_duration_since(t))
                    .unwrap_or_default();
                if idle_for < idle {
                    down = 1;
                    reason = Reason::IdleWait;
                } else {
                    reason = Reason::Idle;
                }
            }
            (down.min(prev), reason)
        };
        // Bounds changed by the operator apply at once.
        let desired = desired.clamp(spec.min, spec.max);
        self.desired = Some(desired);
        Decision {
            desired,
            previous: prev,
            reason,
            detail: detail_base,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn spec(min: u32, max: u32, target: u32) -> ScaleSpec {
        let mut s = ScaleSpec::new("w", "q", min, max, target);
        s.stabilization_seconds = 10;
        s.idle_seconds = 20;
        s.max_step = 4;
        s
    }

    fn load(pending: u64, in_flight: u64, current: u32) -> Inputs {
        Inputs {
            pending,
            in_flight,
            current,
            burst: None,
            busy: None,
        }
    }

    /// One step of a table: advance the clock, observe, expect.
    struct Step {
        after: Duration,
        inputs: Inputs,
        desired: u32,
        reason: Reason,
    }

    fn step(after_ms: u64, inputs: Inputs, desired: u32, reason: Reason) -> Step {
        Step {
            after: Duration::from_millis(after_ms),
            inputs,
            desired,
            reason,
        }
    }

    async fn run(spec: &ScaleSpec, steps: &[Step]) {
        let mut d = Decider::new();
        for (i, s) in steps.iter().enumerate() {
            tokio::time::advance(s.after).await;
            let got = d.decide(spec, &s.inputs, Instant::now());
            assert_eq!(
                (got.desired, got.reason),
                (s.desired, s.reason),
                "step {i}: {}",
                got.describe()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scales_up_at_once_with_a_bounded_step_and_stays_within_max() {
        let s = spec(0, 10, 5);
        run(
            &s,
            &[
                step(0, load(0, 0, 0), 0, Reason::Steady),
                step(250, load(12, 0, 0), 3, Reason::Activation),
                step(250, load(100, 0, 3), 7, Reason::StepLimited),
                step(250, load(100, 0, 7), 10, Reason::Capped),
                step(250, load(1000, 0, 10), 10, Reason::Capped),
            ],
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn activation_threshold_keeps_a_service_at_zero() {
        let mut s = spec(0, 10, 5);
        s.activation = 3;
        run(
            &s,
            &[
                step(0, load(0, 0, 0), 0, Reason::Steady),
                step(250, load(2, 0, 0), 0, Reason::Steady),
                step(250, load(3, 0, 0), 1, Reason::Activation),
                // Once awake, any demand counts.
                step(250, load(1, 0, 1), 1, Reason::Steady),
            ],
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn scales_down_only_after_the_window_and_flapping_load_does_not_flap() {
        let s = spec(1, 10, 1);
        run(
            &s,
            &[
                step(0, load(8, 0, 0), 4, Reason::StepLimited),
                step(250, load(8, 0, 4), 8, Reason::Backlog),
                // Load flaps between 2 and 8 for 8 s: no scale-down.
                step(2000, load(2, 0, 8), 8, Reason::Stabilizing),
                step(2000, load(8, 0, 8), 8, Reason::Steady),
                step(2000, load(2, 0, 8), 8, Reason::Stabilizing),
                step(2000, load(2, 0, 8), 8, Reason::Stabilizing),
                // 10 s after the last 8 the window has forgotten it.
                step(8100, load(2, 0, 8), 2, Reason::Backlog),
                // Drained: held at min once the window passes.
                step(5000, load(0, 0, 2), 2, Reason::Stabilizing),
                step(6000, load(0, 0, 2), 1, Reason::Min),
            ],
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn busy_replicas_are_protected() {
        let s = spec(0, 10, 2);
        run(
            &s,
            &[
                step(0, load(20, 0, 0), 4, Reason::StepLimited),
                step(250, load(12, 8, 4), 8, Reason::StepLimited),
                step(250, load(12, 8, 8), 10, Reason::Backlog),
                // Queue drained, 6 jobs still running (3 replicas' worth, but possibly on
                // 6 replicas): after the window, down to 6, not to 3.
                step(11_000, load(0, 6, 10), 6, Reason::Busy),
                step(11_000, load(0, 1, 6), 1, Reason::Backlog),
            ],
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn busy_count_from_the_backend_is_used_when_known() {
        let s = spec(0, 10, 2);
        let mut d = Decider::new();
        let _ = d.decide(&s, &load(0, 6, 8), Instant::now());
        tokio::time::advance(Duration::from_secs(11)).await;
        let got = d.decide(
            &s,
            &Inputs {
                busy: Some(4),
                ..load(0, 6, 8)
            },
            Instant::now(),
        );
        assert_eq!((got.desired, got.reason), (4, Reason::Busy));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_to_zero_only_after_the_idle_time() {
        let s = spec(0, 10, 5);
        run(
            &s,
            &[
                step(0, load(5, 0, 0), 1, Reason::Activation),
                // 10 s window passes, but idle time (20 s) has not.
                step(11_000, load(0, 0, 1), 1, Reason::IdleWait),
                step(8_000, load(0, 0, 1), 1, Reason::IdleWait),
                step(1_500, load(0, 0, 1), 0, Reason::Idle),
                step(250, load(0, 0, 0), 0, Reason::Steady),
            ],
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_holds_a_floor_and_expires_by_itself() {
        let s = spec(0, 6, 5);
        let until = Instant::now() + Duration::from_secs(30);
        let b = |pending, current| Inputs {
            pending,
            in_flight: 0,
            current,
            burst: Some((4, until)),
            busy: None,
        };
        run(
            &s,
            &[
                step(0, b(0, 0), 4, Reason::Burst),
                step(250, b(0, 4), 4, Reason::Burst),
                // Load above the burst wins.
                step(1000, b(30, 4), 6, Reason::Backlog),
                step(1000, b(0, 6), 6, Reason::Stabilizing),
                step(11_000, b(0, 6), 4, Reason::Burst),
                // Expired: straight down to what the metrics say (idle time passed too).
                step(20_000, b(0, 4), 0, Reason::Idle),
            ],
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_never_exceeds_max_and_bounds_changes_apply_at_once() {
        let s = spec(0, 3, 5);
        let until = Instant::now() + Duration::from_secs(30);
        let mut d = Decider::new();
        let got = d.decide(
            &s,
            &Inputs {
                burst: Some((9, until)),
                ..Default::default()
            },
            Instant::now(),
        );
        assert_eq!(got.desired, 3);
        // The operator lowers max to 2: applied at the next tick, no window.
        let lower = spec(0, 2, 5);
        tokio::time::advance(Duration::from_millis(250)).await;
        let got = d.decide(
            &lower,
            &Inputs {
                current: 3,
                burst: Some((9, until)),
                ..Default::default()
            },
            Instant::now(),
        );
        assert_eq!(got.desired, 2);
        // Raising min lifts it at once too.
        let raised = spec(5, 8, 5);
        tokio::time::advance(Duration::from_millis(250)).await;
        let got = d.decide(&raised, &load(0, 0, 2), Instant::now());
        assert_eq!((got.desired, got.reason), (5, Reason::Min));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_decider_does_not_scale_down_before_a_whole_window() {
        // A new leader finds 6 replicas and no load.
        let s = spec(0, 10, 5);
        run(
            &s,
            &[
                step(0, load(0, 0, 6), 6, Reason::Stabilizing),
                step(9_000, load(0, 0, 6), 6, Reason::Stabilizing),
                step(1_500, load(0, 0, 6), 1, Reason::IdleWait),
                step(10_000, load(0, 0, 1), 0, Reason::Idle),
            ],
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_decisions_are_idempotent() {
        let s = spec(1, 10, 5);
        let mut d = Decider::new();
        let first = d.decide(&s, &load(20, 0, 1), Instant::now());
        for _ in 0..5 {
            let again = d.decide(&s, &load(20, 0, first.desired), Instant::now());
            assert_eq!(again.desired, first.desired);
            assert!(!again.changed());
        }
    }
}
