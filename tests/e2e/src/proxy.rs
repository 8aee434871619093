//! A TCP proxy that can cut the line: a controller reaches the API server through it, and a test
//! partitions that controller alone (its open connections dropped, new ones refused) and heals it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; stops when dropped.
pub struct CuttableProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (cut, connections) = (cut.clone(), connections.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        // Partitioned: the connection is dropped at once.
                        continue;
                    }
                    let forward = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    if let Ok(mut open) = connections.lock() {
                        open.retain(|c| !c.is_finished());
                        open.push(forward);
                    }
                }
            }
        });
        Ok(Self {
            addr,
            cut,
            connections,
            accept,
        })
    }

    /// Partitions: drops every open connection and every new one until [`Self::heal`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut open) = self.connections.lock() {
            for connection in open.drain(..) {
                connection.abort();
            }
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// A copy of the test kubeconfig whose server is reached through `proxy` (same host, so the API
/// server's certificate still matches), written next to it.
pub fn kubeconfig_through(proxy: &CuttableProxy, name: &str) -> Result<std::path::PathBuf> {
    let original = crate::kubeconfig_path();
    let text = std::fs::read_to_string(&original)
        .with_context(|| format!("reading {}", original.display()))?;
    let mut config: serde_json::Value = serde_yaml::from_str(&text)?;
    for cluster in config["clusters"].as_array_mut().into_iter().flatten() {
        cluster["cluster"]["server"] = serde_json::json!(format!("https://{}", proxy.addr));
    }
    let path = crate::repo_root()
        .join("target/e2e-logs")
        .join(format!("kubeconfig-{name}"));
    std::fs::create_dir_all(path.parent().context("a directory")?)?;
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// The API server's address in the test kubeconfig.
pub fn api_server_addr() -> Result<SocketAddr> {
    let text = std::fs::read_to_string(crate::kubeconfig_path())?;
    let config: serde_json::Value = serde_yaml::from_str(&text)?;
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .context("no server in the kubeconfig")?;
    let authority = server.trim_start_matches("https://").trim_end_matches('/');
    use std::net::ToSocketAddrs as _;
    authority
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{authority} does not resolve"))
}
