//! A front door: a TCP proxy on a fixed address in front of one service,
//! for the browser tests.
//!
//! A browser needs addresses that do not change when a service restarts on
//! a fresh port: the page's origin (which order-svc's CORS allows, and
//! where the tracker's WebSocket reconnects) and the order API's URL (which
//! the page is given at start-up). The harness points the door at whichever
//! replica 0 runs now.
//!
//! It also plays the network's part in faults:
//!
//! * [`Frontdoor::sever`]: every connection through it is dropped at once,
//!   with no WebSocket close frame, as when the process behind it is killed
//!   (the kernel closes its sockets); the harness severs when it kills a
//!   replica, since an in-process "kill" cannot close the sockets its
//!   upgraded connections hold;
//! * [`Frontdoor::lose_next_order_response`]: the next
//!   `POST /api/v1/orders` reaches the service, which places the order, but
//!   its answer never reaches the browser (the connection drops): the
//!   browser sees a network error;
//! * [`Frontdoor::hold_next_order_response`]: the answer to the next
//!   `POST /api/v1/orders` is held until the browser gives up on it (a
//!   reload): the request stays in flight.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What happens to the answer of an order POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Dropped with the connection.
    Lose,
    /// Never forwarded; the connection stays until the client leaves.
    Hold,
}

#[derive(Debug)]
struct Door {
    upstream: Mutex<Option<SocketAddr>>,
    /// Bumped to drop every connection.
    generation: watch::Sender<u64>,
    faults: Mutex<Vec<Fault>>,
    order_posts: AtomicUsize,
}

/// A proxy on a fixed `127.0.0.1` port; see the module docs.
#[derive(Debug)]
pub struct Frontdoor {
    addr: SocketAddr,
    door: Arc<Door>,
    task: JoinHandle<()>,
}

/// The request line the faults apply to.
const ORDER_POST: &[u8] = b"POST /api/v1/orders HTTP/1.1";

impl Frontdoor {
    /// Binds a free port; nothing is behind it yet.
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
        let addr = listener.local_addr().expect("a bound address");
        let door = Arc::new(Door {
            upstream: Mutex::new(None),
            generation: watch::channel(0).0,
            faults: Mutex::new(Vec::new()),
            order_posts: AtomicUsize::new(0),
        });
        let d = door.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pass(d.clone(), client));
            }
        });
        Self { addr, door, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends new connections to `upstream` (none: they are closed at once).
    pub fn point_to(&self, upstream: Option<SocketAddr>) {
        *lock(&self.door.upstream) = upstream;
    }

    /// Drops every connection through the door now, and closes new ones
    /// until it is pointed somewhere again.
    pub fn sever(&self) {
        self.point_to(None);
        self.door.generation.send_modify(|g| *g += 1);
    }

    /// The answer to the next order POST is lost (see the module docs).
    pub fn lose_next_order_response(&self) {
        lock(&self.door.faults).push(Fault::Lose);
    }

    /// The answer to the next order POST is held (see the module docs).
    pub fn hold_next_order_response(&self) {
        lock(&self.door.faults).push(Fault::Hold);
    }

    /// Faults armed and not yet used.
    pub fn faults_left(&self) -> usize {
        lock(&self.door.faults).len()
    }

    /// `POST /api/v1/orders` requests that went through.
    pub fn order_posts(&self) -> usize {
        self.door.order_posts.load(Ordering::SeqCst)
    }
}

impl Drop for Frontdoor {
    fn drop(&mut self) {
        self.task.abort();
        self.sever();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection: bytes both ways until either side closes, the door is
/// severed, or a fault ends it.
async fn pass(door: Arc<Door>, client: TcpStream) {
    let mut severed = door.generation.subscribe();
    let Some(upstream) = *lock(&door.upstream) else {
        return;
    };
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    // The fault that applies to the next answer from the server.
    let (fault_tx, fault_rx) = watch::channel(None::<Fault>);
    let door2 = door.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if chunk.windows(ORDER_POST.len()).any(|w| w == ORDER_POST) {
                door2.order_posts.fetch_add(1, Ordering::SeqCst);
                let fault = {
                    let mut faults = lock(&door2.faults);
                    (!faults.is_empty()).then(|| faults.remove(0))
                };
                if fault.is_some() {
                    let _ = fault_tx.send(fault);
                }
            }
            if server_tx.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let fault = *fault_rx.borrow();
            match fault {
                Some(Fault::Lose) => return,
                Some(Fault::Hold) => return std::future::pending().await,
                None => {}
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever direction ends first ends the connection (both sockets are
    // dropped: the peer sees it closed).
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = severed.changed() => {}
    }
}
