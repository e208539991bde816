//! Network stand-ins for the upstream side: an upstream that counts its open connections and
//! reports each close, an upstream that holds chosen requests until the test lets them go, a
//! TLS front (a self-signed certificate for 127.0.0.1) and a small HTTP
//! CONNECT proxy that records what it relayed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// An upstream answering Tencent's OK envelope `delay` after each request, counting the
/// connections open now and at most, and how many have closed.
pub struct Counting {
    pub addr: SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    closed: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    pub async fn start(delay: Duration) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, peak, requests) = (Arc::default(), Arc::default(), Arc::default());
        let (closes, closed) = watch::channel(0);
        let closes = Arc::new(closes);
        let task = {
            let (open, peak, requests): (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
                (Arc::clone(&open), Arc::clone(&peak), Arc::clone(&requests));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let (open, requests, closes) = (open.clone(), requests.clone(), closes.clone());
                    tokio::spawn(async move {
                        let service =
                            hyper::service::service_fn(move |request: Request<Incoming>| {
                                let requests = requests.clone();
                                async move {
                                    let _ = request.into_body().collect().await;
                                    requests.fetch_add(1, Ordering::SeqCst);
                                    if !delay.is_zero() {
                                        tokio::time::sleep(delay).await;
                                    }
                                    let body = super::ok_envelope().to_string();
                                    let mut response = Response::new(Full::new(Bytes::from(body)));
                                    *response.status_mut() = StatusCode::OK;
                                    Ok::<_, std::convert::Infallible>(response)
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        open.fetch_sub(1, Ordering::SeqCst);
                        closes.send_modify(|n| *n += 1);
                    });
                }
            })
        };
        Counting {
            addr,
            open,
            peak,
            requests,
            closed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` connections have closed, for at most `bound`; whether they had.
    pub async fn closed(&self, n: usize, bound: Duration) -> bool {
        let mut closed = self.closed.clone();
        tokio::time::timeout(bound, closed.wait_for(|c| *c >= n))
            .await
            .is_ok()
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream answering Tencent's OK envelope, except that a request whose body contains
/// `HOLD` is held (a request in flight for as long as a test needs) until `release`.
pub struct Held {
    pub addr: SocketAddr,
    held: watch::Receiver<usize>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Held {
    /// What a request's body contains to be held.
    pub const HOLD: &'static str = "hold";

    pub async fn start() -> Held {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (holding, held) = watch::channel(0);
        let (release, released) = watch::channel(false);
        let holding = Arc::new(holding);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (holding, released) = (holding.clone(), released.clone());
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (holding, mut released) = (holding.clone(), released.clone());
                    async move {
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        if body
                            .windows(Self::HOLD.len())
                            .any(|w| w == Self::HOLD.as_bytes())
                        {
                            holding.send_modify(|n| *n += 1);
                            let _ = released.wait_for(|released| *released).await;
                        }
                        let body = Bytes::from(super::ok_envelope().to_string());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Held {
            addr,
            held,
            release,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `n` requests are being held, for at most five seconds.
    pub async fn holding(&self, n: usize) {
        let mut held = self.held.clone();
        let waiting = tokio::time::timeout(Duration::from_secs(5), held.wait_for(|h| *h >= n));
        let reached = matches!(waiting.await, Ok(Ok(_)));
        assert!(reached, "{} held after 5 s, not {n}", *self.held.borrow());
    }

    /// Answers every request held, and every later one at once.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS acceptor with a self-signed certificate for 127.0.0.1, and that certificate's PEM.
pub fn self_signed() -> (tokio_rustls::TlsAcceptor, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        certified.cert.pem(),
    )
}

/// A TLS front for `target` with a self-signed certificate for 127.0.0.1: its address and
/// the certificate's PEM (to trust through `server.ca_file`).
pub async fn tls_front(target: SocketAddr) -> (SocketAddr, String) {
    let (acceptor, pem) = self_signed();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(inbound).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (addr, pem)
}

/// A minimal HTTP proxy that serves CONNECT only, counting tunnels and keeping every byte
/// it relayed from the client (the tunnel's contents, after the CONNECT head).
pub struct ConnectProxy {
    pub addr: SocketAddr,
    connects: Arc<AtomicUsize>,
    relayed: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = Arc::new(AtomicUsize::new(0));
        let relayed = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (connects, relayed) = (connects.clone(), relayed.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (connects, relayed) = (connects.clone(), relayed.clone());
                    tokio::spawn(tunnel(client, connects, relayed));
                }
            })
        };
        ConnectProxy {
            addr,
            connects,
            relayed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// CONNECT requests served.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// Everything the clients sent through their tunnels.
    pub fn relayed(&self) -> Vec<u8> {
        self.relayed.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tunnel(mut client: TcpStream, connects: Arc<AtomicUsize>, relayed: Arc<Mutex<Vec<u8>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || !matches!(client.read(&mut byte).await, Ok(1)) {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let Some(target) = head
        .strip_prefix("CONNECT ")
        .and_then(|rest| rest.split_whitespace().next())
    else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let Ok(mut server) = TcpStream::connect(target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    connects.fetch_add(1, Ordering::SeqCst);
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.split();
    let upward = async {
        let mut buffer = [0u8; 16 * 1024];
        while let Ok(n) = from_client.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            relayed.lock().unwrap().extend_from_slice(&buffer[..n]);
            if to_server.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let downward = async {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::join!(upward, downward);
}
