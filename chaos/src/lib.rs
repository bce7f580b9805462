//! Chaos runs for foodchain: a careful client's load ([`load`]), a local
//! deployment of real processes ([`cluster`]), the faults ([`faults`]) and the
//! invariants that must survive them ([`check`]). The `chaos` binary ties
//! them together; [`bench`] measures the same deployment with nothing
//! breaking.

pub mod bench;
pub mod check;
pub mod cluster;
pub mod faults;
pub mod load;
