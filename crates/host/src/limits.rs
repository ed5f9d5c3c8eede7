//! The descriptor limit, and the flow limit it allows.
//!
//! # Theory of operation
//! Every flow holds at most one host descriptor (its TCP, UDP or ICMP
//! socket; a lingering TCP flow or a forwarded UDP flow holds none), so the
//! flow table must stay below `RLIMIT_NOFILE`, or `socket(2)` starts
//! failing with `EMFILE` for new legitimate connections, the API socket and
//! accepts alike. At start the driver raises its soft limit to the hard
//! one ([`raise_nofile`]; always permitted) and derives the default
//! `--max-flows` from it ([`flows_for`]):
//!
//! ```text
//! max_flows = nofile - RESERVED - listeners - nofile / HEADROOM_DIV
//! ```
//!
//! `RESERVED` covers what the driver itself holds (stdio, epoll, the signal
//! pipe, the guest transport or tap and its listener, the pcap file, the
//! API socket and a few of its connections, resolv.conf reads),
//! `listeners` one descriptor per configured port forward (more may be
//! added through the API: the headroom covers them), and the headroom
//! (1/32 of the limit) the descriptors that are open only for a moment
//! (a connect that fails at once, an accept answered with a reset, a flow
//! being replaced by eviction). With the hard limit of 20 000 this gives
//! 20 000 - 64 - 625 = 19 311 flows. An explicit `--max-flows` wins, but
//! is capped (with a warning) at what the descriptors allow.
//!
//! A child command (`usernet ns`) gets the original soft limit back
//! ([`restore_for_child`]): programs that use `select(2)` break on
//! descriptors above 1024, which is why the usual soft limit is 1024.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Descriptors kept for the driver's own use.
pub const RESERVED: u64 = 64;
/// One descriptor in this many of the limit is headroom for short-lived
/// ones.
pub const HEADROOM_DIV: u64 = 32;
/// The soft limit is raised at most this far, even with an unlimited hard
/// limit, so the default flow table stays of a sane size.
pub const MAX_NOFILE: u64 = 1 << 20;

/// The soft limit before [`raise_nofile`], for [`restore_for_child`];
/// `u64::MAX` while unchanged.
static ORIGINAL_SOFT: AtomicU64 = AtomicU64::new(u64::MAX);

fn get() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

fn set(lim: &libc::rlimit) -> io::Result<()> {
    // SAFETY: setrlimit reads one rlimit through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most
/// [`MAX_NOFILE`]) and returns the soft limit now in force. If raising
/// fails, the current soft limit is returned with the error logged.
pub fn raise_nofile() -> io::Result<u64> {
    let lim = get()?;
    let target = lim.rlim_max.min(MAX_NOFILE).max(lim.rlim_cur);
    if target == lim.rlim_cur {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: lim.rlim_max,
    };
    match set(&raised) {
        Ok(()) => {
            let _ = ORIGINAL_SOFT.compare_exchange(
                u64::MAX,
                lim.rlim_cur,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            Ok(target)
        }
        Err(e) => {
            tracing::warn!(%e, "cannot raise the descriptor limit to {target}");
            Ok(lim.rlim_cur)
        }
    }
}

/// Puts back the soft limit [`raise_nofile`] found. Only an atomic load
/// and `setrlimit(2)`, so it is safe between `fork` and `exec`.
pub fn restore_for_child() {
    let soft = ORIGINAL_SOFT.load(Ordering::SeqCst);
    if soft == u64::MAX {
        return;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers; async-signal-safe.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 {
            lim.rlim_cur = soft.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}

/// The most flows `nofile` descriptors carry with `listeners` port-forward
/// listeners (see the module documentation); at least 1.
pub fn flows_for(nofile: u64, listeners: usize) -> usize {
    let reserve = RESERVED + listeners as u64 + nofile / HEADROOM_DIV;
    usize::try_from(nofile.saturating_sub(reserve).max(1)).unwrap_or(usize::MAX)
}

/// `--max-flows`, given the explicit value if any: the explicit value
/// capped at what `nofile` allows (with a warning), else that bound.
pub fn max_flows(explicit: Option<usize>, nofile: u64, listeners: usize) -> usize {
    let allowed = flows_for(nofile, listeners);
    match explicit {
        Some(n) if n > allowed => {
            tracing::warn!(
                "--max-flows {n}: above the {allowed} flows {nofile} descriptors allow (RLIMIT_NOFILE); using {allowed}"
            );
            allowed
        }
        Some(n) => n,
        None => allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula() {
        assert_eq!(flows_for(20_000, 0), 20_000 - 64 - 625);
        assert_eq!(flows_for(1024, 2), 1024 - 64 - 2 - 32);
        assert_eq!(flows_for(10, 0), 1, "never zero");
        assert_eq!(max_flows(None, 20_000, 0), 19_311);
        assert_eq!(max_flows(Some(100), 20_000, 0), 100);
        assert_eq!(max_flows(Some(50_000), 20_000, 0), 19_311);
        assert_eq!(max_flows(Some(0), 20_000, 0), 0, "left to validation");
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let before = get().expect("getrlimit");
        let now = raise_nofile().expect("raise");
        assert_eq!(now, before.rlim_max.min(MAX_NOFILE).max(before.rlim_cur));
        assert_eq!(get().expect("getrlimit").rlim_cur, now);
    }
}
