//! Letting the thread that wakes a member finish its turn before the member runs.
//!
//! On one machine, a sender (or the sequencer) fans a message out with a system call per
//! member, and each call wakes a member. By default Linux lets the woken thread preempt the
//! one that woke it at once: the sender is switched out after its first datagram, and back
//! in after that member's whole turn, and so on — a process switch per datagram, before the
//! next member even has its datagram (on a virtual machine that switches address spaces
//! through its hypervisor, microseconds each). A thread under `SCHED_BATCH` does not preempt
//! the thread running when it is woken: it runs once that one sleeps or its slice ends, so
//! a fan-out finishes first and the members then run back to back. The cost: woken while a
//! busy program holds its CPU, it waits for that program's slice (milliseconds) instead of
//! preempting it — hence opt-in.

use std::io;

/// Puts the calling thread, and the threads it starts from then on, under `SCHED_BATCH`
/// (see the module docs), at the niceness it has. Call it before starting threads.
#[allow(unsafe_code)] // the one system call std, mio and socket2 do not offer
pub fn no_wakeup_preemption() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is an initialized `sched_param` that outlives the call, which only
    // reads it; pid 0 is the calling thread.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if result == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("cannot schedule as SCHED_BATCH: {e}"),
        ))
    }
}

/// Whether the calling thread is under `SCHED_BATCH`, from `/proc/thread-self/sched`.
pub fn wakeup_preemption_off() -> io::Result<bool> {
    let sched = std::fs::read_to_string("/proc/thread-self/sched")?;
    let policy = sched
        .lines()
        .find_map(|l| l.strip_prefix("policy"))
        .and_then(|rest| {
            rest.trim_start_matches([' ', ':'])
                .trim()
                .parse::<i32>()
                .ok()
        })
        .ok_or_else(|| io::Error::other("no policy in /proc/thread-self/sched"))?;
    Ok(policy == libc::SCHED_BATCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_turned_batch_keeps_its_niceness_and_its_children_inherit_it() {
        std::thread::spawn(|| {
            let before = niceness();
            assert!(!wakeup_preemption_off().unwrap());
            no_wakeup_preemption().unwrap();
            assert!(wakeup_preemption_off().unwrap());
            assert_eq!(niceness(), before);
            let child = std::thread::spawn(wakeup_preemption_off).join().unwrap();
            assert!(child.unwrap(), "a thread started after inherits the policy");
        })
        .join()
        .unwrap();
        // Only the thread that asked (and those it started) changed.
        assert!(!wakeup_preemption_off().unwrap());
    }

    /// The calling thread's niceness: field 19 of `/proc/thread-self/stat`, the 17th after
    /// the command name in parentheses (which may hold spaces).
    fn niceness() -> i64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let (_, after_name) = stat.rsplit_once(')').unwrap();
        after_name
            .split_whitespace()
            .nth(16)
            .unwrap()
            .parse()
            .unwrap()
    }
}
