//! The all-reduce between machines: every rank holds one TCP connection to rank 0 (node 0, on
//! the `--coordinator` port), sends its tensor there, and gets the sum back. Rank 0 adds the
//! tensors in rank order, so every rank receives the same bits.
//!
//! Why not burn-collective's global level: in 0.21 (and its main branch as of 2026-11), its
//! all-reduce between nodes hangs from the second call on: `SyncService::sync` clears a copy of
//! its list of synced nodes, not the list, so the next sync never sees a complete set. Between
//! the devices of one machine the trainer uses burn-collective's local all-reduce.
//!
//! A lost connection (a rank died) is an error at once; a silent rank is one after the peer
//! timeout (socket read timeouts), so no rank waits forever.

use super::Peer;
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const HELLO: &[u8; 8] = b"SELFSUP1";

/// One rank's connections: rank 0 holds one per other rank (index = rank - 1), the others one
/// to rank 0.
pub struct Link {
    peer: Peer,
    streams: Vec<TcpStream>,
}

/// The links of this process's ranks, by rank (found again from any thread, e.g. autodiff's).
fn links() -> &'static Mutex<HashMap<usize, Arc<Mutex<Link>>>> {
    static LINKS: OnceLock<Mutex<HashMap<usize, Arc<Mutex<Link>>>>> = OnceLock::new();
    LINKS.get_or_init(Default::default)
}

/// The link of `rank`, if it connected over TCP.
pub fn link(rank: usize) -> Option<Arc<Mutex<Link>>> {
    links().lock().unwrap().get(&rank).cloned()
}

/// Connects `peer` to the others through `coordinator` (`HOST:PORT` of rank 0), waiting at most
/// the peer timeout for all of them.
pub fn connect(peer: Peer, coordinator: &str) -> Result<()> {
    let deadline = Instant::now() + peer.timeout;
    let streams = if peer.rank == 0 {
        accept_all(peer, coordinator, deadline)?
    } else {
        vec![dial(peer, coordinator, deadline)?]
    };
    for stream in &streams {
        stream.set_read_timeout(Some(peer.timeout))?;
        stream.set_write_timeout(Some(peer.timeout))?;
        stream.set_nodelay(true)?;
    }
    links()
        .lock()
        .unwrap()
        .insert(peer.rank, Arc::new(Mutex::new(Link { peer, streams })));
    Ok(())
}

/// Forgets the link of `rank` (closing its connections).
pub fn disconnect(rank: usize) {
    links().lock().unwrap().remove(&rank);
}

fn accept_all(peer: Peer, coordinator: &str, deadline: Instant) -> Result<Vec<TcpStream>> {
    let port = coordinator
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .context("--coordinator must be HOST:PORT")?;
    let listener = TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("rank 0 cannot listen on port {port} (--coordinator)"))?;
    listener.set_nonblocking(true)?;
    let mut streams: Vec<Option<TcpStream>> = (1..peer.world).map(|_| None).collect();
    while streams.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                let (rank, world) = read_hello(&mut stream)?;
                ensure!(
                    world == peer.world,
                    "a rank started with {world} ranks in all joined a run of {}: start every \
                     node with the same --nodes and --devices",
                    peer.world
                );
                ensure!(
                    (1..peer.world).contains(&rank) && streams[rank - 1].is_none(),
                    "two nodes claim rank {rank}: give each node its own --node-rank"
                );
                stream.write_all(HELLO)?;
                streams[rank - 1] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = streams
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    bail!(
                        "rank 0 waited {} s on port {port} for ranks {} to connect: start them \
                         with --coordinator pointing here (or raise --peer-timeout)",
                        peer.timeout.as_secs(),
                        missing.join(", ")
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("accepting a rank's connection"),
        }
    }
    Ok(streams
        .into_iter()
        .map(|s| s.expect("all connected"))
        .collect())
}

fn dial(peer: Peer, coordinator: &str, deadline: Instant) -> Result<TcpStream> {
    let address = coordinator
        .to_socket_addrs()
        .with_context(|| format!("--coordinator {coordinator}: cannot resolve"))?
        .next()
        .with_context(|| format!("--coordinator {coordinator}: no address"))?;
    loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(peer.timeout))?;
                stream.write_all(HELLO)?;
                stream.write_all(&(peer.rank as u64).to_le_bytes())?;
                stream.write_all(&(peer.world as u64).to_le_bytes())?;
                let mut answer = [0u8; 8];
                stream.read_exact(&mut answer).with_context(|| {
                    format!("rank 0 at {coordinator} refused rank {}", peer.rank)
                })?;
                ensure!(&answer == HELLO, "{coordinator} is not a trainer's rank 0");
                return Ok(stream);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "rank {} could not reach rank 0 at {coordinator} within {} s: is node 0 \
                         running, and is the port open?",
                        peer.rank,
                        peer.timeout.as_secs()
                    )
                })
            }
        }
    }
}

fn read_hello(stream: &mut TcpStream) -> Result<(usize, usize)> {
    let mut hello = [0u8; 24];
    stream
        .read_exact(&mut hello)
        .context("a connection to the coordinator port said nothing")?;
    ensure!(
        &hello[..8] == HELLO,
        "something other than a trainer connected to the coordinator port"
    );
    let number = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().unwrap()) as usize;
    Ok((number(&hello[8..16]), number(&hello[16..24])))
}

fn send(stream: &TcpStream, values: &[f32]) -> std::io::Result<()> {
    let mut writer = BufWriter::with_capacity(1 << 20, stream);
    writer.write_all(&(values.len() as u64).to_le_bytes())?;
    for chunk in values.chunks(1 << 16) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        writer.write_all(&bytes)?;
    }
    writer.flush()
}

fn receive(stream: &TcpStream, len: usize) -> std::io::Result<Vec<f32>> {
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut header = [0u8; 8];
    reader.read_exact(&mut header)?;
    let sent = u64::from_le_bytes(header) as usize;
    if sent != len {
        return Err(std::io::Error::other(format!(
            "a rank sent {sent} values where {len} were expected: the ranks are not running \
             the same step"
        )));
    }
    let mut bytes = vec![0u8; 4 * len];
    reader.read_exact(&mut bytes)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect())
}

impl Link {
    /// The sum over all ranks of `values` (every rank gets the same bits).
    pub fn all_reduce_sum(
        &mut self,
        mut values: Vec<f32>,
    ) -> std::result::Result<Vec<f32>, String> {
        let len = values.len();
        let lost = |rank: usize, e: std::io::Error| {
            let why = match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    format!("no data for {} s", self.peer.timeout.as_secs())
                }
                _ => e.to_string(),
            };
            format!("the connection to rank {rank} failed ({why}): that rank stopped or died")
        };
        if self.peer.rank == 0 {
            for (i, stream) in self.streams.iter().enumerate() {
                let theirs = receive(stream, len).map_err(|e| lost(i + 1, e))?;
                values.iter_mut().zip(theirs).for_each(|(a, b)| *a += b);
            }
            for (i, stream) in self.streams.iter().enumerate() {
                send(stream, &values).map_err(|e| lost(i + 1, e))?;
            }
            Ok(values)
        } else {
            let stream = &self.streams[0];
            send(stream, &values).map_err(|e| lost(0, e))?;
            receive(stream, len).map_err(|e| lost(0, e))
        }
    }
}
