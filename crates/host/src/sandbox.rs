//! The sandbox: what usernet gives up once it is set up.
//!
//! # Theory of operation
//! usernet parses guest frames, which come from an adversary. Everything
//! that needs privileges or the filesystem happens before the first frame
//! is read: entering namespaces, creating the tap, binding the listening
//! sockets, opening the capture, starting `usernet ns`'s command. From then
//! on usernet needs only sockets, its event loop and memory, so
//! [`Sandbox::enter`], called once the event loop is set up and before it
//! reads anything (`usernet_host::Control::started`), takes the rest away:
//! 1. (slirp4netns's `--enable-sandbox` only, [`Sandbox::isolate`]) a new
//!    mount namespace whose root is an empty read-only tmpfs, and every
//!    capability dropped but `CAP_NET_BIND_SERVICE` (port forwards below
//!    1024), as slirp4netns does. It needs `CAP_SYS_ADMIN` in our user
//!    namespace, as slirp4netns's does (podman runs it inside its rootless
//!    user namespace); without it, entering the sandbox fails.
//! 2. `PR_SET_NO_NEW_PRIVS`, so nothing we could still execute gains
//!    privileges (and so an unprivileged process may install a filter).
//! 3. A seccomp-BPF filter on every thread (`SECCOMP_FILTER_FLAG_TSYNC`)
//!    that allows only the system calls of the table below.
//!
//! The table was found by tracing usernet (`strace -f`) under every
//! end-to-end test, counting the calls made after the first `epoll_wait`,
//! then adding the few that only rare paths make (marked *rare*). Its
//! rules are [`Sandbox::allowed`]; a unit test checks that every name
//! there appears here.
//!
//! | System calls | Arguments | Why |
//! |---|---|---|
//! | `epoll_wait`, `epoll_pwait`, `epoll_ctl` | any | the event loop (mio); aarch64 has only `epoll_pwait` |
//! | `read`, `write` | any | the tap, stderr (logs), the capture file, the exit fd |
//! | `recvfrom`, `sendto` | any | every socket: TCP peeks (`MSG_PEEK`) and discards (`MSG_TRUNC`), UDP, ping, DNS upstreams, the QEMU and API sockets, the signal self-pipe |
//! | `socket` | domain `AF_INET` or `AF_INET6` | new outbound flows, ping sockets, DNS upstream sockets, port forwards added through the API |
//! | `connect`, `bind`, `listen`, `accept4`, `shutdown`, `close` | any | outbound connections (and `--outbound-addr`), port forwards, a QEMU client reconnecting, API clients |
//! | `getsockopt`, `setsockopt` | any | `SO_ERROR`, `SO_SNDBUF`, `SO_PEEK_OFF`, `SO_LINGER`, `SO_REUSEADDR`, `SO_SNDTIMEO` |
//! | `ioctl` | `TIOCOUTQ`, `FIONBIO` | a TCP socket's unsent bytes (the send window); std's `set_nonblocking` |
//! | `fcntl` | `F_GETFD`, `F_SETFD`, `F_GETFL`, `F_SETFL` | non-blocking, close-on-exec accepted sockets; debug builds check a descriptor before closing it |
//! | `brk`, `munmap`, `mremap`, `madvise` | any | the allocator (`madvise`: *rare*, trimming) |
//! | `mmap`, `mprotect` | `prot` without `PROT_EXEC` | the allocator (`mprotect`: *rare*, other threads' arenas); no new executable memory |
//! | `futex` | any | *rare*: locks (tracing, stderr) reach the kernel only when contended |
//! | `clock_gettime`, `gettimeofday` | any | *rare*: time, where the vDSO falls back to the kernel (some clock sources) |
//! | `getrandom` | any | hash map keys |
//! | `rt_sigreturn` | any | returning from the SIGINT/SIGTERM handler (signal-hook's self-pipe) |
//! | `unlink`, `unlinkat` | any | removing our socket files (`--socket`, `--api-socket`) and `usernet ns`'s resolv.conf on exit |
//! | `sigaltstack`, `exit`, `exit_group` | any | exiting (std removes the main thread's signal stack) |
//! | `getpid`, `gettid`, `rt_sigprocmask`, `tgkill` | `tgkill`: our process, `SIGABRT` | *rare*: `abort()` (a panic while panicking) still dies by `SIGABRT` |
//! | `wait4`, `kill` | the pid of `usernet ns`'s command ([`Sandbox::child`]) | reaping the command, or killing it when usernet stops first |
//! | `open`, `openat`, `openat2`, `fstat`, `newfstatat`, `statx`, `lseek`, `pread64` | `open`, `openat`: read-only, no `O_CREAT`/`O_TRUNC`; `openat2` unchecked (its flags sit in a struct seccomp cannot read) | only with [`Sandbox::read_files`]: a TFTP server opening its root (`open`, `O_PATH`) and a file beneath it (`openat2`, `RESOLVE_BENEATH`) |
//! | `socket` | domain `AF_UNIX` | only with [`Sandbox::unix_sockets`]: guestfwd to a unix socket |
//! | `splice`, `pipe2`, `recvmsg` | any | only with [`Sandbox::splice`]: the splice path's pipes, and its sockets made inside the namespace, received from the helper there (`SCM_RIGHTS`) |
//!
//! Not used, so not allowed: `readv`/`writev`, `sendmsg` (and `recvmsg`
//! but for the splice path),
//! `recvmmsg`/`sendmmsg`, `getsockname`/`getpeername`; batching I/O
//! would add them here. `unlink` is the one call left that changes files
//! (seccomp cannot look at a path): a subverted usernet could delete what
//! its user may delete, though it can neither read nor write a file.
//!
//! Nothing else: no `open` of new files (unless [`Sandbox::read_files`]),
//! no `execve`, `clone`/`fork`, `setns`, `unshare`, `mount`, `ptrace` or
//! `socket(AF_NETLINK/AF_PACKET)`. usernet does not re-read
//! `/etc/resolv.conf` at run time, so it needs no file access at all.
//! A guestfwd that runs a command cannot live under this filter: seccomp
//! filters are inherited across `fork` and `execve`, so the command would
//! run under it too. Such a command must be started by a helper process
//! forked before [`Sandbox::enter`] (or the sandbox turned off); widening
//! the filter with `clone`/`execve` would undo most of it.
//!
//! The filter costs little: since Linux 5.11 the kernel caches which
//! calls the filter allows whatever their arguments, so the hot ones
//! (`recvfrom`, `sendto`, `epoll_wait`) skip it; calls with argument rules
//! (`ioctl`, `fcntl`, `socket`, `mmap`, `mprotect`) run a few dozen BPF
//! instructions.
//!
//! # A denied system call
//! The filter's action for anything else is `SECCOMP_RET_TRAP`: the kernel
//! does not run the call and sends `SIGSYS`, whose handler (installed by
//! [`Sandbox::enter`]) writes one line naming the system call's number,
//! e.g. `usernet: sandbox: system call 257 denied ...`, and exits with
//! status 159 (128 + `SIGSYS`, what a shell reports for a process killed
//! by it); `usernet ns`'s command then runs on without a network, as after
//! a crash. A silent `SECCOMP_RET_KILL_PROCESS` would leave only an audit
//! record, and `SECCOMP_RET_ERRNO` would turn a missing rule into an error
//! that a caller may retry forever or ignore. To see the call and its
//! arguments: `strace -f usernet ...`, or `--no-sandbox` to run without.
//! Numbers are per architecture (`ausyscall NUMBER`, or
//! `/usr/include/asm/unistd_64.h`).
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Entering the sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The seccomp filter could not be built (an unsupported architecture,
    /// or a rule seccompiler refused).
    #[error("sandbox: cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// The `SIGSYS` handler could not be installed.
    #[error("sandbox: cannot install the SIGSYS handler")]
    Handler(#[source] io::Error),
    /// `PR_SET_NO_NEW_PRIVS` or the filter itself could not be installed.
    #[error("sandbox: cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
    /// A step of [`Sandbox::isolate`] failed.
    #[error("--enable-sandbox: cannot {step}")]
    Isolate {
        /// What it tried, e.g. "create a mount namespace".
        step: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Exit status after a denied system call: 128 + `SIGSYS`.
pub const DENIED_EXIT: i32 = 128 + libc::SIGSYS;

/// What the sandbox still allows, beyond the steady state every mode needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// `usernet ns`'s command, which may be reaped and killed.
    child: Option<libc::pid_t>,
    /// Opening files read-only (a TFTP server).
    read_files: bool,
    /// `socket(AF_UNIX)` (guestfwd to a unix socket).
    unix_sockets: bool,
    /// slirp4netns's `--enable-sandbox`: a new mount namespace and no
    /// capabilities.
    isolate: bool,
    /// The splice path ([`crate::splice`]): `splice`, `pipe2`, and
    /// `recvmsg` for the namespace's sockets.
    splice: bool,
}

/// One allowed system call: any of `rules` must match (none: any
/// arguments do).
#[derive(Debug)]
pub struct Allowed {
    /// Its name, as in the table of the module documentation.
    pub name: &'static str,
    /// Its number on this architecture.
    pub nr: i64,
    /// Argument conditions.
    pub rules: Vec<SeccompRule>,
}

/// A condition on argument `arg`: its low 32 bits (`int` arguments)
/// compared with `op`.
fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(SandboxError::Build)
}

/// One rule per value: argument `arg` equals one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SandboxError> {
    values
        .iter()
        .map(|v| {
            SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, *v)?]).map_err(SandboxError::Build)
        })
        .collect()
}

/// `libc` constants are `c_int`/`c_ulong`; BPF compares their bits.
fn bits(v: impl TryInto<u64>) -> u64 {
    v.try_into().unwrap_or(u64::MAX)
}

impl Sandbox {
    /// The steady state of every mode, nothing more.
    pub fn new() -> Sandbox {
        Sandbox::default()
    }

    /// Also allow reaping (`wait4`) and killing (`kill`) process `pid`:
    /// `usernet ns`'s command.
    #[must_use]
    pub fn child(mut self, pid: u32) -> Sandbox {
        self.child = libc::pid_t::try_from(pid).ok();
        self
    }

    /// Also allow opening files read-only (for a TFTP server: open the
    /// served directory's files at run time).
    #[must_use]
    pub fn read_files(mut self) -> Sandbox {
        self.read_files = true;
        self
    }

    /// Also allow `socket(AF_UNIX)` (for a guestfwd to a unix socket).
    #[must_use]
    pub fn unix_sockets(mut self) -> Sandbox {
        self.unix_sockets = true;
        self
    }

    /// Also allow the splice path ([`crate::splice`]): `splice`, `pipe2`
    /// and `recvmsg` (sockets from the namespace's helper).
    #[must_use]
    pub fn splice(mut self) -> Sandbox {
        self.splice = true;
        self
    }

    /// Also enter a new mount namespace with an empty root and drop every
    /// capability but `CAP_NET_BIND_SERVICE` (slirp4netns's
    /// `--enable-sandbox`).
    #[must_use]
    pub fn isolate(mut self, on: bool) -> Sandbox {
        self.isolate = on;
        self
    }

    /// The allowed system calls and their argument rules.
    pub fn allowed(&self) -> Result<Vec<Allowed>, SandboxError> {
        use SeccompCmpOp::{Eq, MaskedEq};
        let any = |name, nr| Allowed {
            name,
            nr,
            rules: Vec::new(),
        };
        let with = |name, nr, rules| Allowed { name, nr, rules };
        let no_exec = || -> Result<Vec<SeccompRule>, SandboxError> {
            let prot_exec = bits(libc::PROT_EXEC);
            Ok(vec![
                SeccompRule::new(vec![cond(2, MaskedEq(prot_exec), 0)?])
                    .map_err(SandboxError::Build)?,
            ])
        };
        let mut domains = vec![bits(libc::AF_INET), bits(libc::AF_INET6)];
        if self.unix_sockets {
            domains.push(bits(libc::AF_UNIX));
        }
        let pid = bits(std::process::id());

        let mut out = vec![
            // The event loop.
            any("epoll_pwait", libc::SYS_epoll_pwait),
            any("epoll_ctl", libc::SYS_epoll_ctl),
            // Guest, log and capture I/O.
            any("read", libc::SYS_read),
            any("write", libc::SYS_write),
            // Host sockets.
            any("recvfrom", libc::SYS_recvfrom),
            any("sendto", libc::SYS_sendto),
            with("socket", libc::SYS_socket, one_of(0, &domains)?),
            any("connect", libc::SYS_connect),
            any("bind", libc::SYS_bind),
            any("listen", libc::SYS_listen),
            any("accept4", libc::SYS_accept4),
            any("shutdown", libc::SYS_shutdown),
            any("close", libc::SYS_close),
            any("getsockopt", libc::SYS_getsockopt),
            any("setsockopt", libc::SYS_setsockopt),
            with(
                "ioctl",
                libc::SYS_ioctl,
                one_of(1, &[bits(libc::TIOCOUTQ), bits(libc::FIONBIO)])?,
            ),
            with(
                "fcntl",
                libc::SYS_fcntl,
                one_of(
                    1,
                    &[
                        bits(libc::F_GETFD),
                        bits(libc::F_SETFD),
                        bits(libc::F_GETFL),
                        bits(libc::F_SETFL),
                    ],
                )?,
            ),
            // Memory.
            any("brk", libc::SYS_brk),
            with("mmap", libc::SYS_mmap, no_exec()?),
            with("mprotect", libc::SYS_mprotect, no_exec()?),
            any("munmap", libc::SYS_munmap),
            any("mremap", libc::SYS_mremap),
            any("madvise", libc::SYS_madvise),
            // Locks, time, randomness.
            any("futex", libc::SYS_futex),
            any("clock_gettime", libc::SYS_clock_gettime),
            any("gettimeofday", libc::SYS_gettimeofday),
            any("getrandom", libc::SYS_getrandom),
            // Signals and exiting.
            any("rt_sigreturn", libc::SYS_rt_sigreturn),
            any("sigaltstack", libc::SYS_sigaltstack),
            any("exit", libc::SYS_exit),
            any("exit_group", libc::SYS_exit_group),
            any("unlinkat", libc::SYS_unlinkat),
            // abort(): block signals, then tgkill(ourselves, SIGABRT).
            any("getpid", libc::SYS_getpid),
            any("gettid", libc::SYS_gettid),
            any("rt_sigprocmask", libc::SYS_rt_sigprocmask),
            with(
                "tgkill",
                libc::SYS_tgkill,
                vec![
                    SeccompRule::new(vec![cond(0, Eq, pid)?, cond(2, Eq, bits(libc::SIGABRT))?])
                        .map_err(SandboxError::Build)?,
                ],
            ),
        ];
        #[cfg(target_arch = "x86_64")]
        out.extend([
            any("epoll_wait", libc::SYS_epoll_wait),
            any("unlink", libc::SYS_unlink),
        ]);
        if self.splice {
            out.extend([
                any("splice", libc::SYS_splice),
                any("pipe2", libc::SYS_pipe2),
                any("recvmsg", libc::SYS_recvmsg),
            ]);
        }
        if let Some(child) = self.child {
            let child = bits(child);
            out.push(with("wait4", libc::SYS_wait4, one_of(0, &[child])?));
            out.push(with("kill", libc::SYS_kill, one_of(0, &[child])?));
        }
        if self.read_files {
            // Read-only: the access mode is O_RDONLY (0), and nothing is
            // created or truncated.
            let mask = bits(libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC);
            // open(path, flags, mode) and openat(dir, path, flags, mode).
            let read_only = |flags_arg: u8| -> Result<Vec<SeccompRule>, SandboxError> {
                Ok(vec![
                    SeccompRule::new(vec![cond(flags_arg, MaskedEq(mask), 0)?])
                        .map_err(SandboxError::Build)?,
                ])
            };
            out.extend([
                with("open", libc::SYS_open, read_only(1)?),
                with("openat", libc::SYS_openat, read_only(2)?),
                any("openat2", libc::SYS_openat2),
                any("fstat", libc::SYS_fstat),
                any("newfstatat", libc::SYS_newfstatat),
                any("statx", libc::SYS_statx),
                any("lseek", libc::SYS_lseek),
                any("pread64", libc::SYS_pread64),
            ]);
        }
        Ok(out)
    }

    /// The compiled filter: [`Sandbox::allowed`] allowed, anything else
    /// trapped (`SIGSYS`).
    pub fn filter(&self) -> Result<BpfProgram, SandboxError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(SandboxError::Build)?;
        let rules: BTreeMap<i64, Vec<SeccompRule>> = self
            .allowed()?
            .into_iter()
            .map(|a| (a.nr, a.rules))
            .collect();
        let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
            .map_err(SandboxError::Build)?;
        BpfProgram::try_from(filter).map_err(SandboxError::Build)
    }

    /// Enters the sandbox: [`Sandbox::isolate`] if asked, then the
    /// `SIGSYS` handler, `PR_SET_NO_NEW_PRIVS` and the filter, on every
    /// thread. There is no way back.
    pub fn enter(&self) -> Result<(), SandboxError> {
        // Built first: compiling allocates, and must not fail half-way in.
        let filter = self.filter()?;
        if self.isolate {
            isolate()?;
        }
        install_sigsys_handler().map_err(SandboxError::Handler)?;
        seccompiler::apply_filter_all_threads(&filter).map_err(SandboxError::Install)
    }
}

/// The part of `siginfo_t` a `SIGSYS` from seccomp fills in (`_sigsys` in
/// the kernel's union, which starts at offset 16 on 64-bit targets).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// Appends `s` to `buf` at `*len`, as far as it fits.
fn push(buf: &mut [u8], len: &mut usize, s: &[u8]) {
    for &b in s {
        if let Some(slot) = buf.get_mut(*len) {
            *slot = b;
            *len += 1;
        }
    }
}

/// Appends `n` in decimal.
fn push_number(buf: &mut [u8], len: &mut usize, n: i64) {
    if n < 0 {
        push(buf, len, b"-");
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || at == 0 {
            break;
        }
    }
    push(buf, len, &digits[at..]);
}

/// The line written for denied system call `nr`.
fn denied_message(buf: &mut [u8], nr: i64) -> usize {
    let mut len = 0;
    push(buf, &mut len, b"usernet: sandbox: system call ");
    push_number(buf, &mut len, nr);
    push(
        buf,
        &mut len,
        b" denied (see `ausyscall NUMBER`); run with `strace -f` to see it, \
          or with --no-sandbox to run without the filter\n",
    );
    len
}

/// `SIGSYS` handler: names the denied call on stderr and exits. Runs in a
/// signal handler under the filter: it calls only `write` and `_exit`, and
/// touches only its own stack.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t (SA_SIGINFO); for a
        // seccomp SIGSYS its union holds `_sigsys`, laid out as SigsysInfo.
        i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall })
    };
    let mut buf = [0u8; 256];
    let len = denied_message(&mut buf, nr);
    // SAFETY: write and _exit are async-signal-safe; `buf` is ours.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::_exit(DENIED_EXIT);
    }
}

fn install_sigsys_handler() -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is a valid starting point.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is initialised, its mask empty; the handler only
    // makes async-signal-safe calls.
    let r = unsafe {
        libc::sigemptyset(&raw mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &raw const action, std::ptr::null_mut())
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `-1` to an `io::Error` from errno.
fn check(step: &'static str, r: libc::c_long) -> Result<(), SandboxError> {
    if r < 0 {
        Err(SandboxError::Isolate {
            step,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_NET_BIND_SERVICE: u32 = 10;

/// slirp4netns's `--enable-sandbox`: an empty, read-only root in a new
/// mount namespace, then every capability dropped but
/// `CAP_NET_BIND_SERVICE`.
fn isolate() -> Result<(), SandboxError> {
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: each call below takes NUL-terminated literals or null
    // pointers and changes only this process's namespaces and mounts.
    unsafe {
        check(
            "create a mount namespace (needs CAP_SYS_ADMIN)",
            libc::unshare(libc::CLONE_NEWNS).into(),
        )?;
        check(
            "make the mounts private",
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
            .into(),
        )?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(
            "mount an empty tmpfs on /tmp",
            libc::mount(
                c"tmpfs".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                flags,
                c"size=4k,mode=0555".as_ptr().cast(),
            )
            .into(),
        )?;
        // pivot_root(".", "."): the old root ends up stacked on the new
        // one, and detaching it leaves the empty tmpfs (pivot_root(2)).
        check("enter /tmp", libc::chdir(c"/tmp".as_ptr()).into())?;
        check(
            "pivot_root",
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
        )?;
        check(
            "detach the old root",
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH).into(),
        )?;
        check("enter /", libc::chdir(c"/".as_ptr()).into())?;
        check(
            "make the new root read-only",
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REMOUNT | libc::MS_RDONLY | flags,
                std::ptr::null(),
            )
            .into(),
        )?;
    }
    drop_capabilities()
}

fn drop_capabilities() -> Result<(), SandboxError> {
    // SAFETY: prctl with integer arguments; no memory is passed.
    unsafe {
        check(
            "clear the ambient capabilities",
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
            .into(),
        )?;
    }
    for cap in 0..64 {
        if cap == CAP_NET_BIND_SERVICE {
            continue;
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } < 0 {
            // EINVAL: past the last capability. EPERM: without
            // CAP_SETPCAP the bounding set stays, which no-new-privs
            // makes moot (nothing can gain privileges by execve).
            break;
        }
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData for version 3 from a valid header.
    unsafe {
        check(
            "read the capabilities",
            libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()),
        )?;
    }
    let keep = 1u32 << CAP_NET_BIND_SERVICE;
    let kept = data[0].permitted & keep;
    let new = [
        CapData {
            effective: kept,
            permitted: kept,
            inheritable: 0,
        },
        CapData::default(),
    ];
    // SAFETY: capset reads the header and two CapData, all valid.
    unsafe {
        check(
            "drop the capabilities",
            libc::syscall(libc::SYS_capset, &raw mut header, new.as_ptr()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::io::Read as _;
    use std::os::fd::{FromRawFd as _, OwnedFd};

    /// The rules and the module's table do not drift apart.
    #[test]
    fn every_allowed_call_is_documented() {
        let doc = include_str!("sandbox.rs");
        let table: String = doc
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .filter(|l| l.starts_with("//! | `"))
            .collect();
        let all = Sandbox::new()
            .child(1)
            .read_files()
            .unix_sockets()
            .splice()
            .allowed()
            .expect("rules");
        let mut seen = HashSet::new();
        for a in &all {
            assert!(
                table.contains(&format!("`{}`", a.name)),
                "{} not in the table",
                a.name
            );
            // socket appears twice (more domains), as one entry per call.
            assert!(seen.insert(a.nr), "{} listed twice", a.name);
        }
    }

    #[test]
    fn filter_builds_and_options_widen_it() {
        let base = Sandbox::new().filter().expect("filter");
        assert!(!base.is_empty() && base.len() < 4096);
        let names = |s: Sandbox| -> Vec<&'static str> {
            s.allowed().expect("rules").iter().map(|a| a.name).collect()
        };
        let plain = names(Sandbox::new());
        for denied in [
            "openat", "execve", "clone", "clone3", "setns", "unshare", "mount", "ptrace", "wait4",
            "kill", "splice", "pipe2", "recvmsg",
        ] {
            assert!(!plain.contains(&denied), "{denied} allowed by default");
        }
        assert!(names(Sandbox::new().splice()).contains(&"splice"));
        let ns = names(Sandbox::new().child(42));
        assert!(ns.contains(&"wait4") && ns.contains(&"kill"));
        assert!(names(Sandbox::new().read_files()).contains(&"openat"));
        assert!(Sandbox::new().read_files().filter().expect("filter").len() > base.len());
        assert!(
            Sandbox::new()
                .unix_sockets()
                .filter()
                .expect("filter")
                .len()
                > base.len()
        );
    }

    #[test]
    fn denied_message_names_the_call() {
        let mut buf = [0u8; 256];
        let len = denied_message(&mut buf, 257);
        let line = std::str::from_utf8(&buf[..len]).expect("utf8");
        assert!(
            line.starts_with("usernet: sandbox: system call 257 denied"),
            "{line}"
        );
        assert!(
            line.ends_with('\n') && line.contains("--no-sandbox"),
            "{line}"
        );
        let len = denied_message(&mut buf, -1);
        assert!(
            std::str::from_utf8(&buf[..len])
                .expect("utf8")
                .contains("call -1 denied")
        );
        let mut tiny = [0u8; 8];
        assert_eq!(denied_message(&mut tiny, 1), 8);
    }

    /// Runs `body` in a forked child under the filter of `sandbox`, with its
    /// stderr captured; returns (exit status, stderr).
    fn under_filter(sandbox: &Sandbox, body: fn() -> i32) -> (i32, String) {
        let filter = sandbox.filter().expect("filter");
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only makes system calls (dup2, sigaction,
        // prctl, seccomp, the body's) and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: fds[1] is the pipe's open write end.
            unsafe { libc::dup2(fds[1], 2) };
            let code = match install_sigsys_handler()
                .ok()
                .and_then(|()| seccompiler::apply_filter(&filter).ok())
            {
                Some(()) => body(),
                None => 100,
            };
            // SAFETY: ends the child without running the parent's code.
            unsafe { libc::_exit(code) };
        }
        // SAFETY: pipe2 returned this descriptor, owned by nothing else.
        let mut read_end = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
        // SAFETY: as above; closing our write end lets the read see
        // end-of-file once the child exits.
        drop(unsafe { OwnedFd::from_raw_fd(fds[1]) });
        let mut err = String::new();
        let _ = read_end.read_to_string(&mut err);
        let mut status = 0;
        // SAFETY: waits for our child; `status` is a live c_int.
        assert_eq!(unsafe { libc::waitpid(pid, &raw mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child died by a signal: {status}");
        (libc::WEXITSTATUS(status), err)
    }

    /// The installed filter allows what usernet does and traps the rest
    /// with a line naming the call.
    #[test]
    fn filter_allows_sockets_and_traps_the_rest() {
        let sb = Sandbox::new();
        let (code, err) = under_filter(&sb, || {
            // SAFETY: plain socket/close calls.
            unsafe {
                let fd = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0);
                if fd < 0 {
                    return 1;
                }
                libc::close(fd);
            }
            0
        });
        assert_eq!((code, err.as_str()), (0, ""));

        let (code, err) = under_filter(&sb, || {
            // SAFETY: a netlink socket: denied by the domain rule.
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0) };
            0
        });
        assert_eq!(code, DENIED_EXIT, "{err}");
        assert!(
            err.contains(&format!("system call {} denied", libc::SYS_socket)),
            "{err}"
        );

        let (code, err) = under_filter(&sb, || {
            // SAFETY: openat of a literal path: denied outright.
            unsafe { libc::openat(libc::AT_FDCWD, c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
            0
        });
        assert_eq!(code, DENIED_EXIT, "{err}");
        assert!(
            err.contains(&format!("system call {} denied", libc::SYS_openat)),
            "{err}"
        );

        // read_files: read-only opens pass, creating a file does not.
        let files = Sandbox::new().read_files();
        let (code, err) = under_filter(&files, || {
            // SAFETY: openat of a literal path, read-only.
            let fd = unsafe {
                libc::openat(
                    libc::AT_FDCWD,
                    c"/proc/self/status".as_ptr(),
                    libc::O_RDONLY,
                )
            };
            i32::from(fd < 0)
        });
        assert_eq!((code, err.as_str()), (0, ""));
        let (code, _) = under_filter(&files, || {
            // SAFETY: as above, asking to create: denied by the flags rule.
            unsafe {
                libc::openat(
                    libc::AT_FDCWD,
                    c"/nonexistent-usernet-sandbox-test".as_ptr(),
                    libc::O_RDONLY | libc::O_CREAT,
                    0o600,
                )
            };
            0
        });
        assert_eq!(code, DENIED_EXIT);
    }
}
