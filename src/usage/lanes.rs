//! Background work that never delays the request path, and never starves.
//!
//! On the one core a gateway may share with everything else, the SQLite
//! shipper's batch (0.5-1.3 ms of CPU every linger) kept the request thread
//! waiting when a request arrived mid-batch: the kernel's EEVDF scheduler lets
//! a running task finish its slice before a waking one of equal priority runs
//! (`perf sched timehist`: request thread delays of 0.5-1.3 ms, each right
//! after the shipper ran that long). That was the p99's excess at 2,000 req/s.
//! A thread under `SCHED_IDLE` is preempted at once by any normal one.
//!
//! But a `SCHED_IDLE` thread gets almost nothing while the core is saturated,
//! and without `CAP_SYS_NICE` (or a raised `RLIMIT_NICE`) a thread cannot
//! return to normal priority. So a
//! [`Shift`] runs on two threads, its *lanes*, one at a time: the idle lane
//! (`SCHED_IDLE`) while the work keeps up, the catch-up lane (normal priority)
//! while it is behind. The work moves between them after each step; the lane
//! not in use is parked.
//!
//! [`background`] moves the calling thread to `SCHED_IDLE` (lowering a
//! thread's priority needs no privilege); elsewhere than on Linux it does
//! nothing and the idle lane runs at normal priority.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

/// What one step of the work found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing more is waiting than one step takes: the idle lane runs next.
    KeepingUp,
    /// More is waiting than one step takes: the catch-up lane runs next.
    Behind,
    /// Done: `finish` runs, then both lanes end.
    Finished,
}

/// The lane a step runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// `SCHED_IDLE`: a step here should be short, for under saturation it
    /// runs at a fraction of a percent of the core until it hands over.
    Idle,
    /// Normal priority.
    CatchUp,
}

/// Work that runs step by step on a pair of lanes.
pub trait Shift: Send + 'static {
    fn step(&mut self, lane: Lane) -> Step;
    /// Runs once, on the lane that saw [`Step::Finished`].
    fn finish(self);
}

const IDLE: u8 = 0;
const CATCH_UP: u8 = 1;
const DONE: u8 = 2;

/// A parked lane also looks again this often (a missed wake-up costs this).
const PARK: Duration = Duration::from_secs(1);

struct Pair<W> {
    work: Mutex<Option<W>>,
    lane: AtomicU8,
    threads: [OnceLock<Thread>; 2],
}

impl<W: Shift> Pair<W> {
    fn hand_to(&self, lane: u8) {
        self.lane.store(lane, Ordering::Release);
        let woken = if lane == DONE {
            0..2
        } else {
            lane as usize..lane as usize + 1
        };
        for t in &self.threads[woken] {
            if let Some(t) = t.get() {
                t.unpark();
            }
        }
    }

    fn run(&self, mine: u8) {
        let _ = self.threads[mine as usize].set(std::thread::current());
        if mine == IDLE {
            background();
        }
        loop {
            match self.lane.load(Ordering::Acquire) {
                DONE => return,
                lane if lane != mine => {
                    std::thread::park_timeout(PARK);
                    continue;
                }
                _ => {}
            }
            let mut work = self.work.lock().unwrap_or_else(|p| p.into_inner());
            let Some(w) = work.as_mut() else {
                return;
            };
            let lane = if mine == IDLE {
                Lane::Idle
            } else {
                Lane::CatchUp
            };
            match w.step(lane) {
                Step::Finished => {
                    if let Some(w) = work.take() {
                        w.finish();
                    }
                    drop(work);
                    self.hand_to(DONE);
                    return;
                }
                Step::Behind if mine == IDLE => self.hand_to(CATCH_UP),
                Step::KeepingUp if mine == CATCH_UP => self.hand_to(IDLE),
                _ => {}
            }
        }
    }
}

/// Starts `work` on its idle lane (thread `name`) with its catch-up lane
/// (thread `catch_up_name`) parked; both handles are returned for joining.
pub fn spawn<W: Shift>(
    name: String,
    catch_up_name: String,
    work: W,
) -> io::Result<[JoinHandle<()>; 2]> {
    let pair = Arc::new(Pair {
        work: Mutex::new(Some(work)),
        lane: AtomicU8::new(IDLE),
        threads: [OnceLock::new(), OnceLock::new()],
    });
    // The catch-up lane first: it is spawned by this (normal) thread, so it
    // keeps normal priority whatever the idle lane does to itself.
    let p = pair.clone();
    let catch_up = std::thread::Builder::new()
        .name(catch_up_name)
        .spawn(move || p.run(CATCH_UP))?;
    let p = pair.clone();
    let idle = match std::thread::Builder::new()
        .name(name)
        .spawn(move || p.run(IDLE))
    {
        Ok(h) => h,
        Err(e) => {
            pair.hand_to(DONE);
            let _ = catch_up.join();
            return Err(e);
        }
    };
    Ok([idle, catch_up])
}

/// Moves the calling thread to `SCHED_IDLE`: it runs only when no normal
/// thread wants its core. `false` where that is not available.
pub fn background() -> bool {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadSchedulePolicy,
        };
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        match set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = ?e, "cannot move a background thread to SCHED_IDLE");
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn idle_policy() -> bool {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        thread_priority::thread_schedule_policy().unwrap()
            == ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
    }

    /// Plays a script of steps and reports, per step, its thread's name and
    /// whether that thread ran under `SCHED_IDLE`.
    struct Script {
        steps: std::vec::IntoIter<Step>,
        seen: mpsc::Sender<(String, bool)>,
        finished: mpsc::Sender<String>,
    }

    fn here() -> String {
        std::thread::current().name().unwrap_or("").to_owned()
    }

    impl Shift for Script {
        fn step(&mut self, lane: Lane) -> Step {
            let _ = self.seen.send((here(), idle_policy()));
            assert_eq!(lane == Lane::Idle, idle_policy());
            self.steps.next().unwrap_or(Step::Finished)
        }
        fn finish(self) {
            let _ = self.finished.send(here());
        }
    }

    #[test]
    fn work_keeping_up_runs_idle_and_work_behind_runs_at_normal_priority() {
        use Step::*;
        let (seen, saw) = mpsc::channel();
        let (finished, done) = mpsc::channel();
        let script = vec![
            KeepingUp, KeepingUp, Behind, Behind, Behind, KeepingUp, KeepingUp, Behind, KeepingUp,
        ];
        let n = script.len();
        let threads = spawn(
            "lane-idle".into(),
            "lane-catchup".into(),
            Script {
                steps: script.into_iter(),
                seen,
                finished,
            },
        )
        .unwrap();
        for t in threads {
            t.join().unwrap();
        }
        let saw: Vec<(String, bool)> = saw.try_iter().collect();
        let lane = |name: &str, idle: bool| (name.to_owned(), idle);
        let (i, c) = (lane("lane-idle", true), lane("lane-catchup", false));
        // A step runs where the previous one said it should; the step after
        // the script's last is the one that says Finished.
        let expected = vec![
            i.clone(),
            i.clone(),
            i.clone(),
            c.clone(),
            c.clone(),
            c.clone(),
            i.clone(),
            i.clone(),
            c.clone(),
            i.clone(),
        ];
        assert_eq!(saw.len(), n + 1);
        assert_eq!(saw, expected);
        assert_eq!(
            done.try_iter().collect::<Vec<_>>(),
            vec!["lane-idle".to_owned()]
        );
    }

    #[test]
    fn a_thread_moved_to_the_background_is_under_sched_idle() {
        let t = std::thread::spawn(|| (idle_policy(), background(), idle_policy()));
        assert_eq!(t.join().unwrap(), (false, true, true));
    }
}
