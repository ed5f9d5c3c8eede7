//! Namespace plumbing: open and configure a tap inside another network
//! namespace, and start a command in a fresh user + network (+ mount)
//! namespace that waits until its network is ready.
//!
//! # Theory of operation
//! usernet serves a namespace from *outside*: host sockets must be opened
//! in the host's network namespace, so the process stays there, and only
//! the tap is made inside. A tap belongs to the namespace it was created
//! in, whatever namespace later uses its descriptor, so [`open_tap`]:
//! - as a rule, starts a short-lived thread that `setns(CLONE_NEWNET)`s
//!   into the target (network namespaces are per thread), creates and
//!   configures the tap ([`crate::tap::create`], [`crate::tap::configure`])
//!   and returns the descriptor; the thread then ends, so no thread of
//!   ours stays inside;
//! - when the target's user namespace must be entered too (`--userns-path`,
//!   or a rootless caller: `setns` into a network namespace needs
//!   `CAP_SYS_ADMIN` in our own user namespace as well), it forks a child,
//!   since a multi-threaded process may not change user namespace. The
//!   child enters both namespaces, creates the tap and passes the
//!   descriptor back over a socket pair (`SCM_RIGHTS`), or an errno if a
//!   step failed. The child runs only system calls on data prepared before
//!   the fork.
//!
//! Either way the namespace files are closed when [`open_tap`] returns:
//! usernet holds no reference to the namespace but the tap (and, in
//! `usernet ns`, a pidfd to see the command exit), and once in its
//! [`crate::sandbox`] it could not enter it again (no `setns`, no `open`).
//! The one exception is the splice path's [`NsSockets`]: a forked helper
//! that stays inside and makes TCP sockets there on request.
//!
//! [`spawn_unshared`] starts `usernet ns`'s command: its child unshares
//! user, network and mount namespaces, maps uid/gid 0 to the caller's,
//! bind-mounts a generated resolv.conf over `/etc/resolv.conf`, reports its
//! pid on a pipe and blocks on a second pipe until [`Unshared::release`],
//! so the command starts only once the tap is up. Since `Command::spawn`
//! returns only after `exec`, it runs on its own thread.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread::JoinHandle;

use crate::tap::{self, LinkConfig};

/// Setting up the tap in another namespace failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A namespace file could not be opened.
    #[error("{}", path.display())]
    Open {
        /// The namespace file (`/proc/PID/ns/net`, a bind mount...).
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `setns` into the network (or user) namespace failed.
    #[error("cannot enter the namespace")]
    Enter(#[source] io::Error),
    /// The tap could not be created.
    #[error("cannot create tap {0}")]
    Tap(String, #[source] io::Error),
    /// The tap could not be configured (MTU, address, route).
    #[error("cannot configure tap {0}")]
    Configure(String, #[source] io::Error),
    /// The helper thread or child failed before it could say why.
    #[error("namespace helper")]
    Helper(#[source] io::Error),
}

/// Which step of the helper failed, as sent back by a forked child.
const STEP_OK: u32 = 0;
const STEP_ENTER: u32 = 1;
const STEP_TAP: u32 = 2;
const STEP_CONFIGURE: u32 = 3;

fn open_ns(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })
}

fn setns(ns: &File, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor we own for the whole call and a
    // namespace type; it changes only the calling thread's namespaces.
    if unsafe { libc::setns(ns.as_raw_fd(), kind) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The steps run inside the namespace; `Err((step, error))` on failure.
fn make_tap(name: &str, link: &LinkConfig) -> Result<OwnedFd, (u32, io::Error)> {
    let fd = tap::create(name).map_err(|e| (STEP_TAP, e))?;
    tap::configure(name, link).map_err(|e| (STEP_CONFIGURE, e))?;
    Ok(fd)
}

fn step_error(step: u32, name: &str, e: io::Error) -> NetnsError {
    match step {
        STEP_ENTER => NetnsError::Enter(e),
        STEP_TAP => NetnsError::Tap(name.to_owned(), e),
        STEP_CONFIGURE => NetnsError::Configure(name.to_owned(), e),
        _ => NetnsError::Helper(e),
    }
}

/// Whether `path` names the user namespace we are in already.
fn is_own_userns(path: &Path) -> bool {
    let (Ok(a), Ok(b)) = (
        std::fs::metadata(path),
        std::fs::metadata("/proc/self/ns/user"),
    ) else {
        return false;
    };
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Creates tap `name` inside network namespace `netns` (entering user
/// namespace `userns` first, if given and not ours), configures it with
/// `link`, and returns its descriptor, usable from here.
pub fn open_tap(
    netns: &Path,
    userns: Option<&Path>,
    name: &str,
    link: &LinkConfig,
) -> Result<OwnedFd, NetnsError> {
    // Checked here so the forked child never fails on it (and allocates).
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(NetnsError::Tap(
            name.to_owned(),
            io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"),
        ));
    }
    let net = open_ns(netns)?;
    match userns.filter(|u| !is_own_userns(u)) {
        Some(u) => open_tap_forked(&open_ns(u)?, &net, name, link),
        None => open_tap_threaded(net, name, link),
    }
}

fn open_tap_threaded(net: File, name: &str, link: &LinkConfig) -> Result<OwnedFd, NetnsError> {
    let (tname, tlink) = (name.to_owned(), link.clone());
    let thread = std::thread::Builder::new()
        .name("usernet-netns".to_owned())
        .spawn(move || {
            setns(&net, libc::CLONE_NEWNET).map_err(|e| (STEP_ENTER, e))?;
            // The thread ends right after; nothing else runs inside.
            make_tap(&tname, &tlink)
        })
        .map_err(NetnsError::Helper)?;
    match thread.join() {
        Ok(Ok(fd)) => Ok(fd),
        Ok(Err((step, e))) => Err(step_error(step, name, e)),
        Err(_) => Err(NetnsError::Helper(io::Error::other(
            "helper thread panicked",
        ))),
    }
}

fn open_tap_forked(
    user: &File,
    net: &File,
    name: &str,
    link: &LinkConfig,
) -> Result<OwnedFd, NetnsError> {
    let (ours, theirs) = UnixStream::pair().map_err(NetnsError::Helper)?;
    // SAFETY: fork has no memory-safety preconditions; the child below
    // only makes system calls on data prepared before the fork and ends
    // with _exit, never returning into the caller's code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(NetnsError::Helper(io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(ours);
        let result = setns(user, libc::CLONE_NEWUSER)
            .and_then(|()| setns(net, libc::CLONE_NEWNET))
            .map_err(|e| (STEP_ENTER, e))
            .and_then(|()| make_tap(name, link));
        let sent = match result {
            Ok(fd) => send_fd(theirs.as_raw_fd(), STEP_OK, 0, Some(fd.as_raw_fd())),
            Err((step, e)) => send_fd(
                theirs.as_raw_fd(),
                step,
                e.raw_os_error().unwrap_or(libc::EIO),
                None,
            ),
        };
        // SAFETY: _exit ends the child at once, running no destructors or
        // atexit handlers that belong to the parent.
        unsafe { libc::_exit(i32::from(sent.is_err())) };
    }
    drop(theirs);
    let got = recv_fd(ours.as_raw_fd());
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a live c_int.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    match got {
        Ok((STEP_OK, _, Some(fd))) => Ok(fd),
        Ok((step, errno, _)) => Err(step_error(step, name, io::Error::from_raw_os_error(errno))),
        Err(e) => Err(NetnsError::Helper(e)),
    }
}

/// Room for one descriptor's control message, suitably aligned.
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

/// Sends `(step, errno)` and optionally `fd` over `sock`.
fn send_fd(sock: RawFd, step: u32, errno: i32, fd: Option<RawFd>) -> io::Result<()> {
    let mut data = [0u8; 8];
    data[..4].copy_from_slice(&step.to_ne_bytes());
    data[4..].copy_from_slice(&errno.to_ne_bytes());
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cbuf = CmsgBuf([0; 32]);
    // SAFETY: msghdr is plain data; all-zero is valid (no control data).
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    if let Some(fd) = fd {
        hdr.msg_control = cbuf.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        hdr.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: msg_control points to 32 aligned bytes, at least
        // CMSG_SPACE(4) (24); CMSG_FIRSTHDR returns its start, and the
        // header and 4 data bytes written lie within it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&raw const hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd);
        }
    }
    // SAFETY: `hdr` points to live buffers (data, iov, cbuf) for the call.
    let n = unsafe { libc::sendmsg(sock, &raw const hdr, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives what [`send_fd`] sent.
fn recv_fd(sock: RawFd) -> io::Result<(u32, i32, Option<OwnedFd>)> {
    let mut data = [0u8; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut cbuf = CmsgBuf([0; 32]);
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cbuf.0.as_mut_ptr().cast();
    hdr.msg_controllen = cbuf.0.len();
    // SAFETY: `hdr` points to live, writable buffers of the sizes given.
    let n = unsafe { libc::recvmsg(sock, &raw mut hdr, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n != 8 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the namespace helper died",
        ));
    }
    let mut fd = None;
    // SAFETY: the kernel filled `hdr`'s control buffer; the CMSG macros
    // walk it within msg_controllen, and an SCM_RIGHTS message of
    // CMSG_LEN(4) holds one descriptor, now ours.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const hdr);
        if !c.is_null()
            && (*c).cmsg_level == libc::SOL_SOCKET
            && (*c).cmsg_type == libc::SCM_RIGHTS
            && (*c).cmsg_len == libc::CMSG_LEN(4) as usize
        {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
            fd = Some(OwnedFd::from_raw_fd(raw));
        }
    }
    let step = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
    let errno = i32::from_ne_bytes([data[4], data[5], data[6], data[7]]);
    Ok((step, errno, fd))
}

/// A command started in new user, network and mount namespaces, waiting
/// to be released (see [`spawn_unshared`]).
#[derive(Debug)]
pub struct Unshared {
    pid: u32,
    go: File,
    spawner: JoinHandle<io::Result<Child>>,
}

impl Unshared {
    /// The waiting child's pid (its namespaces are `/proc/PID/ns/*`).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the command run; returns it once it has been executed.
    /// (Dropping an `Unshared` instead makes the child exit.)
    pub fn release(mut self) -> io::Result<Child> {
        self.go.write_all(b"1")?;
        drop(self.go);
        self.spawner
            .join()
            .map_err(|_| io::Error::other("spawner thread panicked"))?
    }
}

/// `pipe2(O_CLOEXEC)`: (read end, write end).
fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Writes all of `data` to the file at `path` (in a forked child: system
/// calls only).
fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated; open returns a new fd or -1.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `data` is valid for reads of its length; `fd` is ours.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the descriptor opened above, once.
    unsafe { libc::close(fd) };
    if usize::try_from(n).ok() == Some(data.len()) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Writes `msg` to stderr (in a forked child: one system call).
fn say(msg: &[u8]) {
    // SAFETY: `msg` is valid for reads of its length.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// Starts `cmd` in new user, network and mount namespaces, with uid and gid
/// 0 inside mapped to ours, and `resolv` (if given) bind-mounted over
/// `/etc/resolv.conf`. The command waits until [`Unshared::release`].
pub fn spawn_unshared(mut cmd: Command, resolv: Option<&Path>) -> io::Result<Unshared> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let uid_map = format!("0 {uid} 1\n").into_bytes();
    let gid_map = format!("0 {gid} 1\n").into_bytes();
    let resolv = match resolv {
        Some(p) => Some(CString::new(p.as_os_str().as_bytes())?),
        None => None,
    };
    let (mut ready_r, ready_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let (ready_fd, go_fd) = (ready_w.as_raw_fd(), go_r.as_raw_fd());
    let parent_ends = (ready_r.as_raw_fd(), go_w.as_raw_fd());
    // SAFETY: the closure runs in the forked child before exec and makes
    // only system calls (close, setrlimit, unshare, open/write/close, mount, read, getpid)
    // on data prepared above; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Our copy of the parent's ends: with it open, the read of `go`
            // below would never see the parent go away.
            libc::close(parent_ends.0);
            libc::close(parent_ends.1);
            // The command gets the descriptor limit usernet started with.
            crate::limits::restore_for_child();
            if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Absent on old kernels; required before gid_map otherwise.
            let _ = write_file(c"/proc/self/setgroups", b"deny");
            write_file(c"/proc/self/uid_map", &uid_map)?;
            write_file(c"/proc/self/gid_map", &gid_map)?;
            if let Some(r) = &resolv {
                let none = std::ptr::null();
                let private = libc::mount(
                    none,
                    c"/".as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                );
                if private != 0
                    || libc::mount(
                        r.as_ptr(),
                        c"/etc/resolv.conf".as_ptr(),
                        none,
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    say(
                        b"usernet: cannot bind-mount resolv.conf over /etc/resolv.conf; \
                          the command sees the host's\n",
                    );
                }
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(ready_fd, pid.as_ptr().cast(), pid.len()) != 4 {
                return Err(io::Error::last_os_error());
            }
            let mut go = [0u8; 1];
            if libc::read(go_fd, go.as_mut_ptr().cast(), 1) != 1 {
                // The parent gave up (its tap setup failed).
                return Err(io::Error::from_raw_os_error(libc::ECANCELED));
            }
            Ok(())
        });
    }
    let spawner = std::thread::Builder::new()
        .name("usernet-spawn".to_owned())
        .spawn(move || {
            let child = cmd.spawn();
            // Our copies of the child's ends: closing them lets the parent
            // see end-of-file should the child die early.
            drop((ready_w, go_r));
            child
        })?;
    let mut pid = [0u8; 4];
    if ready_r.read_exact(&mut pid).is_err() {
        // The child failed before reporting: spawn says why.
        return Err(match spawner.join() {
            Ok(Err(e)) => e,
            _ => io::Error::other("the command's namespaces could not be set up"),
        });
    }
    let pid = u32::try_from(i32::from_ne_bytes(pid))
        .map_err(|_| io::Error::other("bad pid from the namespace child"))?;
    Ok(Unshared {
        pid,
        go: go_w,
        spawner,
    })
}

/// A pidfd for `pid` (readable once the process exits).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad pid"))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("bad pidfd"))?;
    // SAFETY: the kernel just returned this descriptor; it is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of descriptor `fd` inherited from our parent
/// (slirp4netns's `--exit-fd` and `--ready-fd`), and marks it close-on-exec.
/// Call at most once per descriptor.
pub fn inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only queries the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if fd < 0 || flags < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: F_SETFD only changes the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: `fd` is open (checked above) and, by this function's
    // contract, inherited and owned by nothing else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How many sockets [`NsSockets`] asks its helper for ahead of need.
const NS_SOCKETS_AHEAD: usize = 4;

/// A source of TCP sockets that live in another network namespace, for the
/// splice path ([`crate::splice`]): a socket belongs to the namespace it was
/// created in, wherever it is used afterwards, so a helper process forked
/// into the namespace (entering its user namespace first when given, as
/// [`open_tap`] does) makes them on request and passes them back over a
/// socket pair (`SCM_RIGHTS`). A process rather than a thread, because a
/// rootless caller must enter the user namespace too, and because the
/// helper then runs outside the sandbox that the parent enters later: it
/// sets the namespace's loopback up (a new namespace's is down), then keeps
/// only the socket pair open and makes no other call than `read`, `socket`
/// and `sendmsg`; it exits when the parent's end closes.
/// The parent asks for a few sockets ahead, so taking one rarely waits.
#[derive(Debug)]
pub struct NsSockets {
    sock: UnixStream,
}

impl NsSockets {
    /// Forks the helper into network namespace `netns` (and user namespace
    /// `userns`, if given and not ours).
    pub fn open(netns: &Path, userns: Option<&Path>) -> Result<NsSockets, NetnsError> {
        let net = open_ns(netns)?;
        let user = userns
            .filter(|u| !is_own_userns(u))
            .map(open_ns)
            .transpose()?;
        let (ours, theirs) = UnixStream::pair().map_err(NetnsError::Helper)?;
        // SAFETY: as in open_tap_forked: the child makes only system calls
        // on data prepared before the fork and ends with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(NetnsError::Helper(io::Error::last_os_error()));
        }
        if pid == 0 {
            let fd = theirs.as_raw_fd();
            let entered = user
                .as_ref()
                .map_or(Ok(()), |u| setns(u, libc::CLONE_NEWUSER))
                .and_then(|()| setns(&net, libc::CLONE_NEWNET));
            let status = match &entered {
                Ok(()) => {
                    // Best effort: `attach`'s namespace may have it up already,
                    // and a failure shows as the listener's bind error.
                    let _ = tap::loopback_up();
                    send_fd(fd, STEP_OK, 0, None)
                }
                Err(e) => send_fd(fd, STEP_ENTER, e.raw_os_error().unwrap_or(libc::EIO), None),
            };
            if entered.is_ok() && status.is_ok() {
                serve_sockets(fd);
            }
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        drop(theirs);
        drop((net, user));
        let mut me = NsSockets { sock: ours };
        match recv_fd(me.sock.as_raw_fd()).map_err(NetnsError::Helper)? {
            (STEP_OK, _, _) => {}
            (step, errno, _) => {
                return Err(step_error(step, "", io::Error::from_raw_os_error(errno)));
            }
        }
        me.sock
            .write_all(&[1; NS_SOCKETS_AHEAD])
            .map_err(NetnsError::Helper)?;
        Ok(me)
    }

    /// A new non-blocking, close-on-exec IPv4 TCP socket in the namespace.
    pub fn socket(&mut self) -> io::Result<OwnedFd> {
        let got = recv_fd(self.sock.as_raw_fd())?;
        // Ask for the next one before using this one.
        self.sock.write_all(&[1])?;
        match got {
            (STEP_OK, _, Some(fd)) => Ok(fd),
            (_, errno, _) => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// The helper's loop (in the forked child): closes every descriptor but
/// stderr and `sock`, then answers each request byte with a new socket (or
/// its errno) until the parent goes away.
fn serve_sockets(sock: RawFd) {
    // SAFETY: close_range only closes descriptors of this (forked) process;
    // the ones below are the parent's copies, unused here.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3, sock - 1, 0);
        libc::syscall(libc::SYS_close_range, sock + 1, libc::c_uint::MAX, 0);
    }
    let mut req = [0u8; 1];
    loop {
        // SAFETY: reads at most 1 byte into `req`.
        if unsafe { libc::read(sock, req.as_mut_ptr().cast(), 1) } != 1 {
            return;
        }
        // SAFETY: socket takes plain integers and returns a new fd or -1.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        let sent = if fd < 0 {
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            send_fd(sock, STEP_TAP, errno, None)
        } else {
            let r = send_fd(sock, STEP_OK, 0, Some(fd));
            // SAFETY: our copy of the socket, now in flight to the parent.
            unsafe { libc::close(fd) };
            r
        };
        if sent.is_err() {
            return;
        }
    }
}
