//! One child-process type for every test server: [`Server`], started from a
//! thread that lives as long as the test process (with `PR_SET_PDEATHSIG`, so
//! the kernel kills it when the test process exits, however it ends), stopped
//! gracefully or killed, restarted on the same port and data directory, and
//! killed when dropped. Every wait is a `tokio` sleep: nothing blocks the
//! test's runtime. What differs between Redis and MongoDB is a [`Launch`].

use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

use tokio::time::Instant;

/// How one kind of server is started and found ready.
pub trait Launch: Clone + Send + Sync + 'static {
    /// Name in messages, and `<NAME>.log` in the data directory.
    const NAME: &'static str;
    /// Longest wait for a started server to answer.
    const START_TIMEOUT: Duration;
    /// How long a graceful stop waits before it kills.
    const STOP_GRACE: Duration;
    /// The command that starts the server on `port` with data in `dir`.
    fn command(&self, port: u16, dir: &Path) -> Command;
    /// Whether the server on `port` answers.
    fn ready(&self, port: u16) -> impl Future<Output = bool> + Send;
    /// Set-up after every start (replica set, server parameters).
    fn configure(&self, _port: u16) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A test server process; see the module docs.
#[derive(Debug)]
pub struct Server<L> {
    launch: L,
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

/// Ports tried before giving up (another process may take a free port first).
const PORT_ATTEMPTS: usize = 5;

impl<L: Launch> Server<L> {
    /// Starts a server on a free port with a fresh data directory.
    pub async fn start_with(launch: L) -> Self {
        let dir = fresh_dir();
        for _ in 0..PORT_ATTEMPTS {
            let server = Self {
                launch: launch.clone(),
                port: free_port(),
                dir: dir.clone(),
                child: Mutex::new(None),
            };
            if server.try_launch().await {
                return server;
            }
        }
        panic!(
            "could not start {}; see {}",
            L::NAME,
            dir.join(format!("{}.log", L::NAME)).display()
        );
    }

    async fn try_launch(&self) -> bool {
        std::fs::create_dir_all(&self.dir).expect("create the server's data directory");
        let log = format!("{}.log", L::NAME);
        let mut cmd = self.launch.command(self.port, &self.dir);
        cmd.stdout(log_file(&self.dir, &log))
            .stderr(log_file(&self.dir, &log));
        let mut child = match spawn_from_reaper_thread(cmd) {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run {} ({e}); install it with `scripts/infra.sh deps`",
                L::NAME
            ),
        };
        let deadline = Instant::now() + L::START_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false; // the port was taken meanwhile, most likely
            }
            if self.launch.ready(self.port).await {
                *lock(&self.child) = Some(child);
                self.launch.configure(self.port).await;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What runs.
    pub fn launch(&self) -> &L {
        &self.launch
    }

    /// Graceful stop: SIGTERM, then SIGKILL after the grace period.
    pub async fn stop(&self) {
        self.signal(libc::SIGTERM, L::STOP_GRACE).await;
    }

    /// Abrupt stop (SIGKILL).
    pub async fn kill(&self) {
        self.signal(libc::SIGKILL, Duration::from_secs(5)).await;
    }

    async fn signal(&self, signal: i32, grace: Duration) {
        let Some(mut child) = lock(&self.child).take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops gracefully, then starts again on the same port and data directory.
    pub async fn restart(&self) {
        self.stop().await;
        let deadline = Instant::now() + L::START_TIMEOUT;
        while !self.try_launch().await {
            assert!(
                Instant::now() < deadline,
                "{} did not restart on port {}",
                L::NAME,
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl<L> Drop for Server<L> {
    fn drop(&mut self) {
        if let Some(mut child) = lock(&self.child).take() {
            // SIGKILL ends it at once: the wait does not block for long.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind port 0")
}

fn base_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("foodchain-tests");
    static CLEANED: OnceLock<()> = OnceLock::new();
    CLEANED.get_or_init(|| remove_dirs_of_dead_processes(&dir));
    dir
}

fn remove_dirs_of_dead_processes(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_string_lossy()
            .split('-')
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn fresh_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = base_dir().join(format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test server directory");
    dir
}

/// Makes the process `cmd` starts get SIGKILL when the thread that spawns it
/// exits (`PR_SET_PDEATHSIG`): for tools such as `chaos` that spawn from
/// their async runtime's worker threads (which live as long as the runtime),
/// so that killing the tool never leaves its services running.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` from a thread that lives as long as the process, with
/// `PR_SET_PDEATHSIG = SIGKILL`. (The death signal fires when the *thread*
/// that forked exits, so forking from a short-lived test thread would kill
/// the shared servers after the first test.)
fn spawn_from_reaper_thread(mut cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn testkit thread");
        Mutex::new(tx)
    });
    die_with_parent(&mut cmd);
    let (tx, rx) = mpsc::channel();
    sender
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((cmd, tx))
        .expect("spawner alive");
    rx.recv().expect("spawner replied")
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}
