//! A self-contained lab for the sensor: a network namespace joined to the root
//! namespace by a veth pair, real `connect()` SYNs from inside it, the agent
//! binary as a child process, and Prometheus + Alertmanager on loopback.
//!
//! Addresses come from 198.18.0.0/15 (RFC 2544) and 2001:db8::/32 (RFC 3849);
//! the namespace has no route out. The agent runs in the root namespace on the
//! root-side end of the pair (an `ip netns exec` would hide /sys/fs/bpf).
pub mod agent;
pub mod campaign;
pub mod eval;
pub mod frames;
pub mod http;
pub mod links;
pub mod monitoring;
pub mod net;
pub mod pcap;
pub mod pki;
pub mod privileges;
pub mod procs;
pub mod rng;
pub mod testrun;
pub mod tmux;

pub use agent::{Agent, Scratch};
pub use net::Lab;
