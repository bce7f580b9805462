//! The CPU priority of a service's process (`CPU_NICE`).
//!
//! On one host (compose, `make run`, the benchmark) the services, Redis and
//! MongoDB share the cores. A customer waits on every order placement, and
//! less directly on delivery-svc and the simulator: their work is
//! asynchronous, but it is what moves an order along. Every service runs at
//! the normal priority by default (0). A higher `CPU_NICE` (1–19) for
//! delivery-svc and the simulator makes the kernel's scheduler prefer the
//! user-facing processes when the cores are contended (nothing changes when
//! they are not: an idle core runs niced work as fast as any). That is a
//! trade, measured in docs/performance.md (21, 28, 30, 31): at nice 10
//! creation at a single client was about a fifth faster and the paced
//! pipeline slower. Until 31 the two ran at 10 by default, when creation
//! needed the head start; since placements of known dishes skip their read
//! (31), it no longer does, and the default is 0.
//!
//! Only lowering is possible (0 to 19): raising priority needs privileges.
//! In Kubernetes the pods' CPU requests (cgroup weights) decide instead, and
//! a nice value only orders the threads inside one container.

use crate::settings::Env;

/// The variable.
pub const VAR: &str = "CPU_NICE";

/// Reads `CPU_NICE` (0 to 19), `default` if unset.
pub fn from_env(env: &mut Env, default: i32) -> i32 {
    let nice = env.parse(VAR, default);
    env.check(
        (0..=19).contains(&nice),
        format!("{VAR}={nice}: must be between 0 (normal) and 19 (lowest)"),
    );
    nice
}

/// Gives every thread of this process the nice value `nice`; the threads
/// it starts later inherit it from the thread that starts them (Linux keeps
/// a nice value per thread). Call it once at start-up, from `main`: never
/// from a library or a test, which share their process.
pub fn apply(nice: i32) -> std::io::Result<()> {
    if nice == 0 {
        return Ok(());
    }
    set_all(nice)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_all(nice: i32) -> std::io::Result<()> {
    for task in std::fs::read_dir("/proc/self/task")? {
        let tid: libc::id_t = task?
            .file_name()
            .to_string_lossy()
            .parse()
            .map_err(std::io::Error::other)?;
        // SAFETY: setpriority takes no pointers; on Linux PRIO_PROCESS with
        // a thread id sets that thread's nice value.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_all(_nice: i32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_lowering_is_accepted() {
        let read = |v: &str| {
            let mut env = Env::from_map([(VAR, v)]);
            let n = from_env(&mut env, 0);
            env.finish().map(|()| n)
        };
        assert_eq!(read("10").unwrap(), 10);
        assert_eq!(read("0").unwrap(), 0);
        assert!(read("-5").is_err());
        assert!(read("20").is_err());
        let mut env = Env::from_map::<&str, &str>([]);
        assert_eq!(from_env(&mut env, 10), 10);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn every_thread_of_the_process_gets_it_and_new_threads_inherit_it() {
        // In a child process of its own: a nice value cannot be raised back.
        if std::env::var("PRIORITY_CHILD").is_err() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                        .args([
                    "--exact",
                    "priority::tests::every_thread_of_the_process_gets_it_and_new_threads_inherit_it",
                ])
                .env("PRIORITY_CHILD", "1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        fn nice_of(stat: &str) -> i32 {
            let stat = std::fs::read_to_string(stat).unwrap();
            // The 19th field (the 17th after the command in parentheses).
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            after.split(' ').nth(16).unwrap().parse().unwrap()
        }
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let before = std::thread::spawn(move || {
            started_tx.send(()).unwrap();
            stop_rx.recv().unwrap();
        });
        started_rx.recv().unwrap();
        assert_eq!(nice_of("/proc/thread-self/stat"), 0);
        apply(7).unwrap();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let tid = task.unwrap().file_name().to_string_lossy().into_owned();
            assert_eq!(
                nice_of(&format!("/proc/self/task/{tid}/stat")),
                7,
                "thread {tid}"
            );
        }
        let later = std::thread::spawn(|| nice_of("/proc/thread-self/stat"));
        assert_eq!(later.join().unwrap(), 7, "a thread started later");
        stop_tx.send(()).unwrap();
        before.join().unwrap();
    }
}
