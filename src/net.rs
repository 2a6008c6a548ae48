//! Native-protocol plumbing over TCP: a framed server with limits and graceful stop, and a multiplexed client.
//!
//! The server reads frames in order and hands each to the handler
//! synchronously (so work that must follow arrival order, such as applying
//! replicated records, happens in order), then awaits the returned future
//! concurrently and writes answers as they complete, tagged with the
//! request id.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

use crate::proto::{self, ErrorCode, Frame, Kind};

/// Connections a listener accepts at once.
pub const CONNECTIONS_MAX: usize = 1024;
/// Requests one connection may have in flight before reading pauses.
pub const IN_FLIGHT_MAX: usize = 256;

/// An answer: `Ack` with a payload, or an error the sender can act on.
pub type Reply = Result<Vec<u8>, (ErrorCode, String)>;
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// What a server does with each frame.
pub trait Handler: Send + Sync + 'static {
    /// Called in arrival order; the synchronous part runs before the next
    /// frame of the connection is looked at.
    fn handle(self: &Arc<Self>, frame: Frame) -> ReplyFuture;
}

pub fn ready(reply: Reply) -> ReplyFuture {
    Box::pin(std::future::ready(reply))
}

/// Accepts connections until `shutdown` fires. The caller binds, so tests
/// bind `127.0.0.1:0`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    mut shutdown: broadcast::Receiver<()>,
) {
    let limit = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = shutdown.recv() => return,
            permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        let (socket, _) = tokio::select! {
            _ = shutdown.recv() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(socket, handler).await {
                tracing::debug!("connection closed: {e}");
            }
            drop(permit);
        });
    }
}

async fn connection<H: Handler>(socket: TcpStream, handler: Arc<H>) -> anyhow::Result<()> {
    let (mut reader, mut writer) = socket.into_split();
    let (tx, mut rx) = mpsc::channel::<BytesMut>(IN_FLIGHT_MAX);
    let writer_task = tokio::spawn(async move {
        while let Some(buf) = rx.recv().await {
            if writer.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let result = loop {
        match proto::parse(&mut buf) {
            Ok(Some(frame)) => {
                let permit = in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let id = frame.request_id;
                let fut = handler.handle(frame);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let reply = fut.await;
                    let mut out = BytesMut::new();
                    match reply {
                        Ok(payload) => proto::encode(Kind::Ack, id, &payload, &mut out),
                        Err((code, msg)) => proto::encode(
                            Kind::Error,
                            id,
                            &proto::encode_error(code, &msg),
                            &mut out,
                        ),
                    }
                    let _ = tx.send(out).await;
                    drop(permit);
                });
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                // The stream cannot be resynced after a bad header: say why, then close.
                let mut out = BytesMut::new();
                proto::encode(
                    Kind::Error,
                    0,
                    &proto::encode_error(ErrorCode::BadRequest, &e.to_string()),
                    &mut out,
                );
                let _ = tx.send(out).await;
                break Err(e.into());
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e.into()),
        }
    };
    drop(tx);
    let _ = writer_task.await;
    result
}

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to {addr} lost")]
    Lost { addr: String },
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: {message}")]
    Remote {
        addr: String,
        code: ErrorCode,
        message: String,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Bytes, (ErrorCode, String)>>>>>;

/// A multiplexed connection to one peer: many requests in flight, answers
/// matched by request id. Reconnects on the next request after a failure.
pub struct Client {
    addr: String,
    next_id: AtomicU64,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

struct Conn {
    tx: mpsc::Sender<BytesMut>,
    pending: Pending,
    /// Cleared by the reader when the connection ends.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl Client {
    pub fn new(addr: impl Into<String>) -> Client {
        Client {
            addr: addr.into(),
            next_id: AtomicU64::new(1),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request and waits for its answer.
    pub async fn request(
        &self,
        kind: Kind,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut out = BytesMut::new();
        proto::encode(kind, id, payload, &mut out);
        let (tx, rx) = oneshot::channel();
        let send = async {
            let mut guard = self.conn.lock().await;
            if guard
                .as_ref()
                .is_none_or(|c| !c.alive.load(Ordering::Acquire))
            {
                *guard = Some(self.connect().await?);
            }
            let conn = guard.as_ref().expect("just set");
            conn.pending.lock().expect("poisoned").insert(id, tx);
            // The reader marks the connection dead before it fails what is
            // pending: a request registered after that must not wait for
            // an answer that cannot come.
            if !conn.alive.load(Ordering::Acquire) {
                conn.pending.lock().expect("poisoned").remove(&id);
                *guard = None;
                return Err(ClientError::Lost {
                    addr: self.addr.clone(),
                });
            }
            let sender = conn.tx.clone();
            drop(guard);
            sender.send(out).await.map_err(|_| ClientError::Lost {
                addr: self.addr.clone(),
            })
        };
        let timed = async {
            send.await?;
            match rx.await {
                Ok(Ok(payload)) => Ok(payload),
                Ok(Err((code, message))) => Err(ClientError::Remote {
                    addr: self.addr.clone(),
                    code,
                    message,
                }),
                Err(_) => Err(ClientError::Lost {
                    addr: self.addr.clone(),
                }),
            }
        };
        match tokio::time::timeout(timeout, timed).await {
            Ok(r) => r,
            Err(_) => {
                if let Some(conn) = self.conn.lock().await.as_ref() {
                    conn.pending.lock().expect("poisoned").remove(&id);
                }
                Err(ClientError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        }
    }

    async fn connect(&self) -> Result<Conn, ClientError> {
        let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&self.addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr: self.addr.clone(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| ClientError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<BytesMut>(IN_FLIGHT_MAX);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(async move {
            while let Some(buf) = rx.recv().await {
                if writer.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let reader_pending = pending.clone();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let reader_alive = alive.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            'read: loop {
                loop {
                    match proto::parse(&mut buf) {
                        Ok(Some(frame)) => {
                            let answer = match frame.kind {
                                Kind::Error => Err(proto::decode_error(&frame.payload)),
                                _ => Ok(frame.payload),
                            };
                            if let Some(tx) = reader_pending
                                .lock()
                                .expect("poisoned")
                                .remove(&frame.request_id)
                            {
                                let _ = tx.send(answer);
                            }
                        }
                        Ok(None) => break,
                        Err(_) => break 'read,
                    }
                }
                match reader.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // Mark the connection dead, then fail everything still waiting.
            reader_alive.store(false, Ordering::Release);
            reader_pending.lock().expect("poisoned").clear();
        });
        Ok(Conn { tx, pending, alive })
    }
}

/// A blocking one-shot request, for CLI commands.
pub fn request_blocking(
    addr: &str,
    kind: Kind,
    payload: &[u8],
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    use std::io::{Read, Write};
    let connect_err = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let sock: std::net::SocketAddr = addr.parse().map_err(|_| {
        connect_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an ip:port address",
        ))
    })?;
    let mut stream = std::net::TcpStream::connect_timeout(&sock, timeout).map_err(connect_err)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(connect_err)?;
    let mut out = BytesMut::new();
    proto::encode(kind, 1, payload, &mut out);
    stream.write_all(&out).map_err(|_| ClientError::Lost {
        addr: addr.to_string(),
    })?;
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match proto::parse(&mut buf) {
            Ok(Some(frame)) if frame.kind == Kind::Error => {
                let (code, message) = proto::decode_error(&frame.payload);
                return Err(ClientError::Remote {
                    addr: addr.to_string(),
                    code,
                    message,
                });
            }
            Ok(Some(frame)) => return Ok(frame.payload),
            Ok(None) => {}
            Err(_) => {
                return Err(ClientError::Lost {
                    addr: addr.to_string(),
                })
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(ClientError::Lost {
                    addr: addr.to_string(),
                })
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout {
                    addr: addr.to_string(),
                    timeout,
                })
            }
            Err(_) => {
                return Err(ClientError::Lost {
                    addr: addr.to_string(),
                })
            }
        }
    }
}
